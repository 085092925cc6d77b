-- stellakeys SQLite schema: the store's dual-control policy (docs/decisions/0015).
--
-- Which operations need a ceremony, and with which rules, is a fact about the store, so that
-- no process can switch dual control off with its own configuration. Each version is a row;
-- versions are append-only. policy holds canonical JSON (stellakeys/ceremony/policy.py);
-- ceremony_id names the executed ceremony-policy-update ceremony that authorised a weakening.
-- Instants as INTEGER microseconds since the epoch, as in 0001.

CREATE TABLE ceremony_policy (
    version     INTEGER PRIMARY KEY NOT NULL CHECK (version >= 1),
    policy      TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL,
    recorded_by TEXT    NOT NULL,
    ceremony_id TEXT    REFERENCES ceremonies (id)
);

CREATE TRIGGER ceremony_policy_no_update BEFORE UPDATE ON ceremony_policy
BEGIN
    SELECT RAISE(ABORT, 'ceremony policy versions are append-only');
END;
CREATE TRIGGER ceremony_policy_no_delete BEFORE DELETE ON ceremony_policy
BEGIN
    SELECT RAISE(ABORT, 'ceremony policy versions are append-only');
END;

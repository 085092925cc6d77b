-- stellakeys SQLite schema: key lifecycle intents (crash consistency of generate and rotate).
--
-- A row is written before the key store is touched and deleted in the transaction that
-- records the key, so a row that outlives its process marks an interrupted generate/rotate.
-- Self-contained (no reference to other tables), so it can be renumbered freely.
-- See stellakeys/intents.py and docs/decisions/0016-key-identity-and-crash-consistency.md.

CREATE TABLE key_intents (
    key_id        TEXT    PRIMARY KEY NOT NULL,
    operation     TEXT    NOT NULL CHECK (operation IN ('generate', 'rotate')),
    profile       TEXT    NOT NULL,
    algorithm     TEXT    NOT NULL,
    key_store     TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    params        TEXT    NOT NULL DEFAULT '{}',
    public_key    TEXT,
    fingerprint   TEXT,
    key_store_uri TEXT
);

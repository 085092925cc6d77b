-- stellakeys SQLite schema, version 1.
--
-- Modelled on the key rotation runbook's signer.* tables (SQLite has no schemas, so the
-- tables drop the prefix). Conventions, see docs/decisions/0004-storage.md:
--   * instants are INTEGER microseconds since 1970-01-01T00:00:00Z (exact, sortable, fast);
--   * UUIDs are TEXT in canonical lowercase form (str(uuid.UUID));
--   * JSON (metadata, details, lists) is TEXT, serialised with sorted keys.
-- Applied inside one transaction by stellakeys.storage.sqlite; never edit an applied
-- migration, add a new numbered file instead.

CREATE TABLE keys (
    key_id        TEXT    PRIMARY KEY NOT NULL,
    algorithm     TEXT    NOT NULL,
    public_key    TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    profile       TEXT,
    key_store_uri TEXT,
    origin        TEXT    NOT NULL,
    metadata      TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_keys_created ON keys (created_at, key_id);

CREATE TABLE trust_anchors (
    id                      TEXT    PRIMARY KEY NOT NULL,
    purl_pattern            TEXT    NOT NULL,
    allowed_predicate_types TEXT    NOT NULL DEFAULT '[]',
    policy_version          TEXT    NOT NULL,
    created_at              INTEGER NOT NULL,
    active                  INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    -- The pattern's storage index key (stellakeys.purl.PurlPattern.index_key): verification
    -- fetches candidate anchors with WHERE index_key IN (...) AND active = 1.
    index_key               TEXT    NOT NULL
);
CREATE INDEX idx_trust_anchors_index_key ON trust_anchors (index_key, active);
CREATE INDEX idx_trust_anchors_created ON trust_anchors (created_at, id);

CREATE TABLE key_history (
    id            TEXT    PRIMARY KEY NOT NULL,
    anchor_id     TEXT    NOT NULL REFERENCES trust_anchors (id),
    key_id        TEXT    NOT NULL,
    public_key    TEXT    NOT NULL,
    algorithm     TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    added_at      INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT,
    expires_at    INTEGER,
    metadata      TEXT    NOT NULL DEFAULT '{}',
    UNIQUE (anchor_id, key_id)
);
CREATE INDEX idx_key_history_validity ON key_history (anchor_id, added_at, revoked_at);
CREATE INDEX idx_key_history_key ON key_history (key_id);

CREATE TABLE key_audit_log (
    event_id    TEXT    PRIMARY KEY NOT NULL,
    seq         INTEGER UNIQUE NOT NULL CHECK (seq >= 1),
    event_type  TEXT    NOT NULL,
    key_id      TEXT,
    anchor_id   TEXT,
    actor       TEXT    NOT NULL,
    timestamp   INTEGER NOT NULL,
    ceremony_id TEXT,
    details     TEXT    NOT NULL DEFAULT '{}',
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX idx_audit_log_time ON key_audit_log (timestamp DESC);
CREATE INDEX idx_audit_log_key ON key_audit_log (key_id);
CREATE INDEX idx_audit_log_ceremony ON key_audit_log (ceremony_id);

CREATE TABLE proofs (
    digest        TEXT    PRIMARY KEY NOT NULL,
    envelope_json BLOB    NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX idx_proofs_created ON proofs (created_at, digest);

CREATE TABLE proof_timestamps (
    id     INTEGER PRIMARY KEY,
    digest TEXT    NOT NULL REFERENCES proofs (digest),
    token  BLOB    NOT NULL,
    UNIQUE (digest, token)
);

-- Defence in depth for the runbook's principles ("never remove keys from history", an
-- append-only audit log). The hash chain is what detects tampering; these triggers stop the
-- application, or a careless manual session, from doing it by accident.
CREATE TRIGGER key_audit_log_no_update BEFORE UPDATE ON key_audit_log
BEGIN
    SELECT RAISE(ABORT, 'key_audit_log is append-only');
END;
CREATE TRIGGER key_audit_log_no_delete BEFORE DELETE ON key_audit_log
BEGIN
    SELECT RAISE(ABORT, 'key_audit_log is append-only');
END;
CREATE TRIGGER keys_no_delete BEFORE DELETE ON keys
BEGIN
    SELECT RAISE(ABORT, 'keys are never deleted');
END;
CREATE TRIGGER trust_anchors_no_delete BEFORE DELETE ON trust_anchors
BEGIN
    SELECT RAISE(ABORT, 'trust anchors are deactivated, never deleted');
END;
CREATE TRIGGER key_history_no_delete BEFORE DELETE ON key_history
BEGIN
    SELECT RAISE(ABORT, 'key history entries are never deleted');
END;

-- stellakeys PostgreSQL schema, version 1: the key rotation runbook's signer.* tables.
--
-- Applied by `stellaops db migrate` (stellakeys.storage.postgres.migrate) inside one
-- transaction, after the migrator has created the schema `signer` and
-- signer.schema_migrations. Never edit an applied migration; add the next numbered file.
-- Conventions (docs/decisions/0007-postgres.md):
--   * instants are TIMESTAMPTZ (microsecond resolution, like Python's datetime);
--   * ids are UUID, metadata and details JSONB, as in the runbook;
--   * identifiers we sort or match by (key ids, index keys, digests, event types) are
--     COLLATE "C": byte order, the same as SQLite and Python, whatever the database locale.
-- Every function pins its search_path, so objects in other schemas cannot hijack it.

-- One row: the write lock and the change counter. Every write transaction of the adapter
-- starts with SELECT ... FOR UPDATE on it (writers queue here, so the audit chain stays one
-- line), and the statement triggers below bump change_counter once per writing transaction,
-- whoever writes (the adapter, or a manual session), which is what change_token() reads.
CREATE TABLE signer.store_state (
    id             SMALLINT PRIMARY KEY CHECK (id = 1),
    change_counter BIGINT   NOT NULL
);
INSERT INTO signer.store_state (id, change_counter) VALUES (1, 0);

CREATE TABLE signer.keys (
    key_id        TEXT COLLATE "C" PRIMARY KEY,
    algorithm     TEXT        NOT NULL,
    public_key    TEXT        NOT NULL,
    fingerprint   TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    profile       TEXT,
    key_store_uri TEXT,
    origin        TEXT        NOT NULL,
    metadata      JSONB       NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_keys_created ON signer.keys (created_at, key_id);

CREATE TABLE signer.trust_anchors (
    id                      UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    purl_pattern            TEXT        NOT NULL,
    allowed_predicate_types TEXT[]      NOT NULL DEFAULT '{}',
    policy_version          TEXT        NOT NULL,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    active                  BOOLEAN     NOT NULL DEFAULT TRUE,
    -- The pattern's storage index key (stellakeys.purl PurlPattern.index_key): verification
    -- fetches candidate anchors with WHERE index_key = ANY(...) AND active.
    index_key               TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idx_trust_anchors_index_key ON signer.trust_anchors (index_key) WHERE active;
CREATE INDEX idx_trust_anchors_created ON signer.trust_anchors (created_at, id);

-- The runbook's table, column for column, plus fingerprint and expires_at.
CREATE TABLE signer.key_history (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    anchor_id     UUID NOT NULL REFERENCES signer.trust_anchors(id),
    key_id        TEXT COLLATE "C" NOT NULL,
    public_key    TEXT NOT NULL,
    algorithm     TEXT NOT NULL,
    added_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    revoked_at    TIMESTAMPTZ,
    revoke_reason TEXT,
    metadata      JSONB,
    fingerprint   TEXT NOT NULL,
    expires_at    TIMESTAMPTZ,
    UNIQUE(anchor_id, key_id)
);
CREATE INDEX idx_key_history_validity ON signer.key_history (anchor_id, added_at, revoked_at);
CREATE INDEX idx_key_history_key ON signer.key_history (key_id);

-- The runbook's table, column for column, plus the hash chain (seq, prev_hash, hash) and the
-- ceremony an event belongs to.
CREATE TABLE signer.key_audit_log (
    event_id    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type  TEXT COLLATE "C" NOT NULL,
    key_id      TEXT COLLATE "C",
    anchor_id   UUID,
    actor       TEXT NOT NULL,
    timestamp   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    details     JSONB,
    seq         BIGINT NOT NULL UNIQUE CHECK (seq >= 1),
    ceremony_id TEXT COLLATE "C",
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX idx_audit_log_time ON signer.key_audit_log (timestamp DESC);
CREATE INDEX idx_audit_log_key ON signer.key_audit_log (key_id);
CREATE INDEX idx_audit_log_ceremony ON signer.key_audit_log (ceremony_id);

CREATE TABLE signer.proofs (
    digest        TEXT COLLATE "C" PRIMARY KEY,
    envelope_json BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_proofs_created ON signer.proofs (created_at, digest);

-- RFC 3161 tokens run to several kilobytes, beyond what a btree entry may hold, so uniqueness
-- is on their SHA-256.
CREATE TABLE signer.proof_timestamps (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest       TEXT COLLATE "C" NOT NULL REFERENCES signer.proofs(digest),
    token        BYTEA NOT NULL,
    token_sha256 BYTEA NOT NULL GENERATED ALWAYS AS (pg_catalog.sha256(token)) STORED,
    UNIQUE (digest, token_sha256)
);

-- The change counter: bumped once per transaction that writes any of the tables, by a
-- statement trigger (so COPY and multi-row statements cost one bump, and nobody can forget).
-- The transaction-local setting remembers that this transaction has bumped already; it is
-- rolled back with the transaction (or savepoint), like the bump itself.
CREATE FUNCTION signer.bump_change_counter() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF current_setting('stellakeys.bumped', true) IS DISTINCT FROM 'on' THEN
        UPDATE signer.store_state SET change_counter = change_counter + 1 WHERE id = 1;
        PERFORM set_config('stellakeys.bumped', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.keys
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER trust_anchors_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.trust_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER key_history_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.key_history
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER key_audit_log_changed AFTER INSERT ON signer.key_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER proofs_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.proofs
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER proof_timestamps_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.proof_timestamps
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();

-- Defence in depth for the runbook's principles ("never remove keys from history", an
-- append-only audit log), as in the SQLite schema. The hash chain is what detects tampering;
-- these stop the application, or a careless psql session, from doing it by accident.
CREATE FUNCTION signer.refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER key_audit_log_no_update BEFORE UPDATE ON signer.key_audit_log
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('key_audit_log is append-only');
CREATE TRIGGER key_audit_log_no_delete BEFORE DELETE ON signer.key_audit_log
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('key_audit_log is append-only');
CREATE TRIGGER key_audit_log_no_truncate BEFORE TRUNCATE ON signer.key_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('key_audit_log is append-only');
CREATE TRIGGER keys_no_delete BEFORE DELETE ON signer.keys
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('keys are never deleted');
CREATE TRIGGER keys_no_truncate BEFORE TRUNCATE ON signer.keys
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('keys are never deleted');
CREATE TRIGGER trust_anchors_no_delete BEFORE DELETE ON signer.trust_anchors
    FOR EACH ROW EXECUTE FUNCTION
    signer.refuse_change('trust anchors are deactivated, never deleted');
CREATE TRIGGER trust_anchors_no_truncate BEFORE TRUNCATE ON signer.trust_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION
    signer.refuse_change('trust anchors are deactivated, never deleted');
CREATE TRIGGER key_history_no_delete BEFORE DELETE ON signer.key_history
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('key history entries are never deleted');
CREATE TRIGGER key_history_no_truncate BEFORE TRUNCATE ON signer.key_history
    FOR EACH STATEMENT EXECUTE FUNCTION
    signer.refuse_change('key history entries are never deleted');
CREATE TRIGGER store_state_no_delete BEFORE DELETE ON signer.store_state
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('signer.store_state keeps its row');
CREATE TRIGGER store_state_no_truncate BEFORE TRUNCATE ON signer.store_state
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('signer.store_state keeps its row');

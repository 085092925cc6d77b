-- stellakeys PostgreSQL schema: the store's dual-control policy (docs/decisions/0015).
--
-- As the SQLite migration 0003_ceremony_policy, with PostgreSQL types. policy is TEXT: the
-- canonical JSON exactly as written (its digest is recomputed from it).

CREATE TABLE signer.ceremony_policy (
    version     INTEGER     PRIMARY KEY CHECK (version >= 1),
    policy      TEXT        NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    recorded_by TEXT        NOT NULL,
    ceremony_id TEXT COLLATE "C" REFERENCES signer.ceremonies (id)
);

CREATE TRIGGER ceremony_policy_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.ceremony_policy
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER ceremony_policy_no_update BEFORE UPDATE ON signer.ceremony_policy
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('ceremony policy versions are append-only');
CREATE TRIGGER ceremony_policy_no_delete BEFORE DELETE ON signer.ceremony_policy
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('ceremony policy versions are append-only');
CREATE TRIGGER ceremony_policy_no_truncate BEFORE TRUNCATE ON signer.ceremony_policy
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('ceremony policy versions are append-only');

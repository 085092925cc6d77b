-- stellakeys PostgreSQL schema: one document per feed version (docs/decisions/0017).
--
-- As the SQLite migration of the same name. Two `feed publish` runs started together both
-- read version N as the tip and both sign an N+1; a publication now records its version here
-- in the transaction that stores the proof, and the primary key lets exactly one of them have
-- it, whichever process or host (a unique index holds even for writers that skip the
-- store_state lock). Self-contained: it only adds a table, its triggers and a function.

CREATE TABLE signer.feed_versions (
    version      INTEGER     PRIMARY KEY CHECK (version >= 1),
    -- The feed envelope, stored in signer.proofs like any other signed document.
    digest       TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES signer.proofs(digest),
    published_at TIMESTAMPTZ NOT NULL
);

-- No gaps: version N+1 only after N, whoever writes (a hand-written INSERT included).
CREATE FUNCTION signer.feed_versions_no_gap() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.version > 1 AND NOT EXISTS (
        SELECT 1 FROM signer.feed_versions WHERE version = NEW.version - 1
    ) THEN
        RAISE EXCEPTION 'feed versions are recorded in order, without gaps'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER feed_versions_no_gap BEFORE INSERT ON signer.feed_versions
    FOR EACH ROW EXECUTE FUNCTION signer.feed_versions_no_gap();

CREATE TRIGGER feed_versions_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.feed_versions
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();

-- A published version is history: consumers may already trust it.
CREATE TRIGGER feed_versions_no_update BEFORE UPDATE ON signer.feed_versions
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('feed versions are append-only');
CREATE TRIGGER feed_versions_no_delete BEFORE DELETE ON signer.feed_versions
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('feed versions are append-only');
CREATE TRIGGER feed_versions_no_truncate BEFORE TRUNCATE ON signer.feed_versions
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('feed versions are append-only');

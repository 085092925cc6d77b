-- stellakeys SQLite schema: one document per feed version (docs/decisions/0017).
--
-- Two `feed publish` runs started together both read version N as the tip and both sign an
-- N+1; before this table both were stored, and consumers saw two documents under one version
-- (equivocation). A publication now records its version here in the same transaction that
-- stores the proof, and the primary key lets exactly one of them have it -- whichever process,
-- whichever host. Self-contained: it only adds a table and its triggers.

CREATE TABLE feed_versions (
    version      INTEGER PRIMARY KEY NOT NULL CHECK (version >= 1),
    -- The feed envelope, stored in proofs like any other signed document.
    digest       TEXT    NOT NULL UNIQUE REFERENCES proofs (digest),
    published_at INTEGER NOT NULL
);

-- No gaps: version N+1 only after N, whoever writes (a hand-written INSERT included).
CREATE TRIGGER feed_versions_no_gap BEFORE INSERT ON feed_versions
    WHEN NEW.version > 1
     AND NOT EXISTS (SELECT 1 FROM feed_versions WHERE version = NEW.version - 1)
BEGIN
    SELECT RAISE(ABORT, 'feed versions are recorded in order, without gaps');
END;
-- A published version is history: consumers may already trust it.
CREATE TRIGGER feed_versions_no_update BEFORE UPDATE ON feed_versions
BEGIN
    SELECT RAISE(ABORT, 'feed versions are append-only');
END;
CREATE TRIGGER feed_versions_no_delete BEFORE DELETE ON feed_versions
BEGIN
    SELECT RAISE(ABORT, 'feed versions are append-only');
END;

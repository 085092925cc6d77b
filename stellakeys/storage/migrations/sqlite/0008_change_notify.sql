-- PostgreSQL's 0008 makes its change counter send NOTIFY on commit (decision 0024). SQLite has
-- no such channel and needs none: its change token is read from the file's shared memory
-- (PRAGMA data_version), which costs no round trip. The number is kept so both dialects share
-- one numbering; this migration changes nothing.
SELECT 1;

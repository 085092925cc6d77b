-- stellakeys PostgreSQL schema: key lifecycle intents (crash consistency of generate and
-- rotate). As the SQLite migration of the same name, with PostgreSQL types.
--
-- A row is written before the key store is touched and deleted in the transaction that
-- records the key, so a row that outlives its process marks an interrupted generate/rotate.
-- Self-contained (no reference to other tables), so it can be renumbered freely.

CREATE TABLE signer.key_intents (
    key_id        TEXT COLLATE "C" PRIMARY KEY,
    operation     TEXT        NOT NULL CHECK (operation IN ('generate', 'rotate')),
    profile       TEXT        NOT NULL,
    algorithm     TEXT        NOT NULL,
    key_store     TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    params        JSONB       NOT NULL DEFAULT '{}',
    public_key    TEXT,
    fingerprint   TEXT,
    key_store_uri TEXT
);

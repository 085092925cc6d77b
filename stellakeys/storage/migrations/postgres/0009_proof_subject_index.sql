-- stellakeys PostgreSQL schema: an index from PURL lookup keys to the proofs whose statements
-- name such a PURL (issue 20). Same tables and rules as sqlite/0009_proof_subject_index.sql:
-- proof_subject_keys is a superset index (callers decide each proof the strict way), and
-- proofs_unindexed queues every inserted proof (trigger) until put_proof has indexed it, so
-- proofs written by other means are still read.

CREATE TABLE signer.proof_subject_keys (
    index_key TEXT COLLATE "C" NOT NULL,
    digest    TEXT COLLATE "C" NOT NULL REFERENCES signer.proofs(digest),
    PRIMARY KEY (index_key, digest)
);

CREATE TABLE signer.proofs_unindexed (
    digest TEXT COLLATE "C" PRIMARY KEY REFERENCES signer.proofs(digest)
);

INSERT INTO signer.proofs_unindexed (digest) SELECT digest FROM signer.proofs;

CREATE FUNCTION signer.queue_proof_for_index() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO signer.proofs_unindexed (digest) VALUES (NEW.digest);
    RETURN NULL;
END
$$;

CREATE TRIGGER proofs_queue_for_index AFTER INSERT ON signer.proofs
    FOR EACH ROW EXECUTE FUNCTION signer.queue_proof_for_index();

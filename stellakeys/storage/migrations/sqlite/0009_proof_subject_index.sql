-- stellakeys SQLite schema: an index from PURL lookup keys to the proofs whose statements
-- name such a PURL (issue 20: `anchor status` reads an anchor's proofs, not the home's).
--
-- proof_subject_keys holds, for each PURL subject of a stored in-toto statement, every key of
-- stellakeys.purl_pattern.lookup_keys_for(purl) but "" (the universal pattern reads every
-- proof anyway). A pattern that matches the PURL has its index_key among them, so
-- WHERE index_key = <pattern's key> finds a superset of the anchor's proofs; the caller
-- decides each one the strict way.
--
-- proofs_unindexed: the proofs the index does not cover yet. Every insert into proofs queues
-- the proof here (trigger), so a proof written by anything but put_proof (an older version, a
-- hand-made import) is still found: readers take the queue as candidates too. put_proof
-- indexes the proof and removes it from the queue in the same transaction. The proofs stored
-- before this migration start in the queue.

CREATE TABLE proof_subject_keys (
    index_key TEXT NOT NULL,
    digest    TEXT NOT NULL REFERENCES proofs (digest),
    PRIMARY KEY (index_key, digest)
) WITHOUT ROWID;

CREATE TABLE proofs_unindexed (
    digest TEXT PRIMARY KEY NOT NULL REFERENCES proofs (digest)
) WITHOUT ROWID;

INSERT INTO proofs_unindexed (digest) SELECT digest FROM proofs;

CREATE TRIGGER proofs_queue_for_index AFTER INSERT ON proofs
BEGIN
    INSERT INTO proofs_unindexed (digest) VALUES (NEW.digest);
END;

-- stellakeys SQLite schema: find a public key's memberships by fingerprint.
--
-- Verification treats a compromise recorded in any anchor as a fact about the key, wherever
-- it appears and under whatever key id (decision 0012); history_by_fingerprints reads this.

CREATE INDEX idx_key_history_fingerprint ON key_history (fingerprint);

-- stellakeys SQLite schema: revocation reasons as a closed vocabulary, revocations that only
-- get stricter, and proofs that never change (docs/decisions/0013-revocation-evidence.md).
--
-- Self-contained (it may be renumbered). Ranks and spellings must match
-- stellakeys/revocation.py; tests check every pair of reasons against RevocationReason.

-- 1. Existing free-text reasons become words of the vocabulary, exactly as
--    stellakeys.revocation.legacy_reason reads them: a known spelling (case, spaces, '-' and
--    '_' ignored), else compromise if the text mentions it, else unspecified. The original
--    text is kept in metadata.revokeReasonText. Done before the triggers below exist.
UPDATE key_history
SET metadata = json_set(metadata, '$.revokeReasonText', revoke_reason),
    revoke_reason = CASE replace(replace(replace(lower(revoke_reason), ' ', ''), '-', ''), '_', '')
        WHEN 'unspecified' THEN 'unspecified'
        WHEN 'superseded' THEN 'superseded'
        WHEN 'rotation' THEN 'rotation'
        WHEN 'rotated' THEN 'rotation'
        WHEN 'keyrotation' THEN 'rotation'
        WHEN 'annualrotation' THEN 'annual-rotation'
        WHEN 'cessationofoperation' THEN 'cessation-of-operation'
        WHEN 'affiliationchanged' THEN 'affiliation-changed'
        WHEN 'privilegewithdrawn' THEN 'privilege-withdrawn'
        WHEN 'compromise' THEN 'compromise'
        WHEN 'compromised' THEN 'compromise'
        WHEN 'keycompromise' THEN 'compromise'
        WHEN 'keycompromised' THEN 'compromise'
        WHEN 'cacompromise' THEN 'compromise'
        WHEN 'aacompromise' THEN 'compromise'
        ELSE CASE WHEN instr(lower(revoke_reason), 'compromis') > 0 THEN 'compromise'
                  ELSE 'unspecified' END
    END
WHERE revoke_reason IS NOT NULL
  AND revoke_reason NOT IN ('unspecified', 'superseded', 'rotation', 'annual-rotation',
      'cessation-of-operation', 'affiliation-changed', 'privilege-withdrawn', 'compromise');

-- 2. Only words of the vocabulary are stored.
CREATE TRIGGER key_history_reason_known_insert BEFORE INSERT ON key_history
    WHEN NEW.revoke_reason IS NOT NULL AND NEW.revoke_reason NOT IN ('unspecified',
        'superseded', 'rotation', 'annual-rotation', 'cessation-of-operation',
        'affiliation-changed', 'privilege-withdrawn', 'compromise')
BEGIN
    SELECT RAISE(ABORT, 'unknown revocation reason (see stellakeys.revocation)');
END;
CREATE TRIGGER key_history_reason_known_update BEFORE UPDATE OF revoke_reason ON key_history
    WHEN NEW.revoke_reason IS NOT NULL AND NEW.revoke_reason NOT IN ('unspecified',
        'superseded', 'rotation', 'annual-rotation', 'cessation-of-operation',
        'affiliation-changed', 'privilege-withdrawn', 'compromise')
BEGIN
    SELECT RAISE(ABORT, 'unknown revocation reason (see stellakeys.revocation)');
END;

-- 3. A key's membership never changes identity, and its revocation (and expiry) only gets
--    stricter: NULL -> a time, or an earlier time; a reason only for a stronger one. No
--    un-revocation, no postponement, no downgrade of compromise.
CREATE TRIGGER key_history_identity_fixed BEFORE UPDATE ON key_history
    WHEN NEW.id IS NOT OLD.id OR NEW.anchor_id IS NOT OLD.anchor_id
        OR NEW.key_id IS NOT OLD.key_id OR NEW.public_key IS NOT OLD.public_key
        OR NEW.algorithm IS NOT OLD.algorithm OR NEW.fingerprint IS NOT OLD.fingerprint
        OR NEW.added_at IS NOT OLD.added_at
BEGIN
    SELECT RAISE(ABORT, 'a key history entry never changes its key, anchor or added_at');
END;
CREATE TRIGGER key_history_only_stricter BEFORE UPDATE ON key_history
    WHEN (OLD.revoked_at IS NOT NULL
            AND (NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at))
        OR (OLD.expires_at IS NOT NULL
            AND (NEW.expires_at IS NULL OR NEW.expires_at > OLD.expires_at))
        OR (OLD.revoke_reason IS NOT NULL AND NEW.revoke_reason IS NULL)
        OR (OLD.revoke_reason IS NOT NULL AND NEW.revoke_reason IS NOT OLD.revoke_reason
            AND (CASE NEW.revoke_reason
                    WHEN 'unspecified' THEN 0 WHEN 'superseded' THEN 1
                    WHEN 'rotation' THEN 1 WHEN 'annual-rotation' THEN 1
                    WHEN 'cessation-of-operation' THEN 1 WHEN 'affiliation-changed' THEN 2
                    WHEN 'privilege-withdrawn' THEN 3 WHEN 'compromise' THEN 4 ELSE -1 END)
                <= (CASE OLD.revoke_reason
                    WHEN 'unspecified' THEN 0 WHEN 'superseded' THEN 1
                    WHEN 'rotation' THEN 1 WHEN 'annual-rotation' THEN 1
                    WHEN 'cessation-of-operation' THEN 1 WHEN 'affiliation-changed' THEN 2
                    WHEN 'privilege-withdrawn' THEN 3 WHEN 'compromise' THEN 4 ELSE -1 END))
BEGIN
    SELECT RAISE(ABORT, 'a revocation can only be made earlier or stronger');
END;

-- 4. Proofs are content-addressed evidence: stored once, never changed or removed (their
--    RFC 3161 tokens likewise; new tokens are appended).
CREATE TRIGGER proofs_no_update BEFORE UPDATE ON proofs
BEGIN
    SELECT RAISE(ABORT, 'proofs are append-only');
END;
CREATE TRIGGER proofs_no_delete BEFORE DELETE ON proofs
BEGIN
    SELECT RAISE(ABORT, 'proofs are append-only');
END;
CREATE TRIGGER proof_timestamps_no_update BEFORE UPDATE ON proof_timestamps
BEGIN
    SELECT RAISE(ABORT, 'proof timestamps are append-only');
END;
CREATE TRIGGER proof_timestamps_no_delete BEFORE DELETE ON proof_timestamps
BEGIN
    SELECT RAISE(ABORT, 'proof timestamps are append-only');
END;

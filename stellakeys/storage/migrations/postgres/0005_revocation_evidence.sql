-- stellakeys PostgreSQL schema: revocation reasons as a closed vocabulary, revocations that
-- only get stricter, and proofs that never change (docs/decisions/0013-revocation-evidence.md).
--
-- As the SQLite migration of the same name. Self-contained (it may be renumbered). Ranks and
-- spellings must match stellakeys/revocation.py; tests check every pair of reasons.

-- The strength of a stored reason (stellakeys.revocation.RevocationReason.strength); NULL for
-- anything outside the vocabulary.
CREATE FUNCTION signer.revocation_rank(reason TEXT) RETURNS INTEGER
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
    SELECT CASE reason
        WHEN 'unspecified' THEN 0
        WHEN 'superseded' THEN 1
        WHEN 'rotation' THEN 1
        WHEN 'annual-rotation' THEN 1
        WHEN 'cessation-of-operation' THEN 1
        WHEN 'affiliation-changed' THEN 2
        WHEN 'privilege-withdrawn' THEN 3
        WHEN 'compromise' THEN 4
    END
$$;

-- 1. Existing free-text reasons become words of the vocabulary, exactly as
--    stellakeys.revocation.legacy_reason reads them; the original text is kept in
--    metadata.revokeReasonText. Done before the triggers below exist.
UPDATE signer.key_history
SET metadata = COALESCE(metadata, '{}'::jsonb)
        || jsonb_build_object('revokeReasonText', revoke_reason),
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
        ELSE CASE WHEN strpos(lower(revoke_reason), 'compromis') > 0 THEN 'compromise'
                  ELSE 'unspecified' END
    END
WHERE revoke_reason IS NOT NULL AND signer.revocation_rank(revoke_reason) IS NULL;

-- 2. Only words of the vocabulary are stored.
ALTER TABLE signer.key_history ADD CONSTRAINT key_history_reason_known
    CHECK (revoke_reason IS NULL OR signer.revocation_rank(revoke_reason) IS NOT NULL);

-- 3. A key's membership never changes identity, and its revocation (and expiry) only gets
--    stricter: NULL -> a time, or an earlier time; a reason only for a stronger one.
CREATE FUNCTION signer.key_history_only_stricter() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.anchor_id IS DISTINCT FROM OLD.anchor_id
        OR NEW.key_id IS DISTINCT FROM OLD.key_id
        OR NEW.public_key IS DISTINCT FROM OLD.public_key
        OR NEW.algorithm IS DISTINCT FROM OLD.algorithm
        OR NEW.fingerprint IS DISTINCT FROM OLD.fingerprint
        OR NEW.added_at IS DISTINCT FROM OLD.added_at THEN
        RAISE EXCEPTION 'a key history entry never changes its key, anchor or added_at'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (OLD.revoked_at IS NOT NULL
            AND (NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at))
        OR (OLD.expires_at IS NOT NULL
            AND (NEW.expires_at IS NULL OR NEW.expires_at > OLD.expires_at))
        OR (OLD.revoke_reason IS NOT NULL AND NEW.revoke_reason IS NULL)
        OR (OLD.revoke_reason IS NOT NULL
            AND NEW.revoke_reason IS DISTINCT FROM OLD.revoke_reason
            AND COALESCE(signer.revocation_rank(NEW.revoke_reason), -1)
                <= COALESCE(signer.revocation_rank(OLD.revoke_reason), -1)) THEN
        RAISE EXCEPTION 'a revocation can only be made earlier or stronger'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER key_history_only_stricter BEFORE UPDATE ON signer.key_history
    FOR EACH ROW EXECUTE FUNCTION signer.key_history_only_stricter();

-- 4. Proofs are content-addressed evidence: stored once, never changed or removed (their
--    RFC 3161 tokens likewise; new tokens are appended).
CREATE TRIGGER proofs_no_update BEFORE UPDATE ON signer.proofs
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('proofs are append-only');
CREATE TRIGGER proofs_no_delete BEFORE DELETE ON signer.proofs
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('proofs are append-only');
CREATE TRIGGER proofs_no_truncate BEFORE TRUNCATE ON signer.proofs
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('proofs are append-only');
CREATE TRIGGER proof_timestamps_no_update BEFORE UPDATE ON signer.proof_timestamps
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('proof timestamps are append-only');
CREATE TRIGGER proof_timestamps_no_delete BEFORE DELETE ON signer.proof_timestamps
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('proof timestamps are append-only');
CREATE TRIGGER proof_timestamps_no_truncate BEFORE TRUNCATE ON signer.proof_timestamps
    FOR EACH STATEMENT EXECUTE FUNCTION
    signer.refuse_change('proof timestamps are append-only');

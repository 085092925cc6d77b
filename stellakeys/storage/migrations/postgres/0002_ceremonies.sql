-- stellakeys PostgreSQL schema, version 2: dual-control ceremonies and their approvals.
--
-- As the SQLite migration 0002, with PostgreSQL types. payload and result are JSON (not
-- JSONB): json keeps the canonical text exactly as stored, and the digest the approvers sign
-- is recomputed from it; it can still be queried with -> and ->>.

CREATE TABLE signer.ceremonies (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    type               TEXT        NOT NULL,
    subject            TEXT        NOT NULL,
    state              TEXT        NOT NULL CHECK (state IN ('Pending', 'PartiallyApproved',
                                       'Approved', 'Executed', 'Expired', 'Cancelled')),
    threshold          INTEGER     NOT NULL CHECK (threshold >= 2),
    required_approvers INTEGER     NOT NULL CHECK (required_approvers >= threshold),
    payload            JSON        NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL CHECK (expires_at > created_at),
    initiator          TEXT        NOT NULL,
    allowed_approvers  TEXT[]      NOT NULL DEFAULT '{}',
    executed_at        TIMESTAMPTZ,
    result             JSON,
    cancelled_at       TIMESTAMPTZ,
    cancel_reason      TEXT,
    -- One-off notifications already sent (expiry-75, expiry-90).
    notifications_sent TEXT[]      NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_ceremonies_state ON signer.ceremonies (state, created_at, id);
CREATE INDEX idx_ceremonies_created ON signer.ceremonies (created_at, id);

CREATE TABLE signer.ceremony_approvals (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    ceremony_id           TEXT COLLATE "C" NOT NULL REFERENCES signer.ceremonies (id),
    approver              TEXT        NOT NULL,
    decision              TEXT        NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason                TEXT        NOT NULL,
    approved_at           TIMESTAMPTZ NOT NULL,
    signature_valid       BOOLEAN     NOT NULL,
    signature_key_id      TEXT,
    signature_algorithm   TEXT,
    signature_fingerprint TEXT,
    -- The DSSE envelope exactly as submitted, so the approval can be verified again later.
    envelope              BYTEA,
    -- One decision per approver per ceremony.
    UNIQUE (ceremony_id, approver)
);
CREATE INDEX idx_ceremony_approvals_order
    ON signer.ceremony_approvals (ceremony_id, approved_at, id);

CREATE TRIGGER ceremonies_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.ceremonies
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();
CREATE TRIGGER ceremony_approvals_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signer.ceremony_approvals
    FOR EACH STATEMENT EXECUTE FUNCTION signer.bump_change_counter();

-- Defence in depth, as for keys and the audit log: ceremonies are never deleted, their terms
-- never change, a terminal ceremony never changes at all, and approvals are append-only.
CREATE TRIGGER ceremonies_no_delete BEFORE DELETE ON signer.ceremonies
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('ceremonies are never deleted');
CREATE TRIGGER ceremonies_no_truncate BEFORE TRUNCATE ON signer.ceremonies
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('ceremonies are never deleted');
CREATE TRIGGER ceremonies_terms_fixed BEFORE UPDATE OF id, type, subject, threshold,
    required_approvers, payload, created_at, expires_at, initiator, allowed_approvers
    ON signer.ceremonies
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('the terms of a ceremony never change');
CREATE TRIGGER ceremonies_terminal_final BEFORE UPDATE ON signer.ceremonies
    FOR EACH ROW WHEN (OLD.state IN ('Executed', 'Expired', 'Cancelled'))
    EXECUTE FUNCTION signer.refuse_change('a ceremony in a terminal state never changes');
CREATE TRIGGER ceremony_approvals_no_update BEFORE UPDATE ON signer.ceremony_approvals
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('ceremony approvals are append-only');
CREATE TRIGGER ceremony_approvals_no_delete BEFORE DELETE ON signer.ceremony_approvals
    FOR EACH ROW EXECUTE FUNCTION signer.refuse_change('ceremony approvals are append-only');
CREATE TRIGGER ceremony_approvals_no_truncate BEFORE TRUNCATE ON signer.ceremony_approvals
    FOR EACH STATEMENT EXECUTE FUNCTION signer.refuse_change('ceremony approvals are append-only');

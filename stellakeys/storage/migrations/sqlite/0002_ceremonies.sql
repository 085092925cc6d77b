-- stellakeys SQLite schema, version 2: dual-control ceremonies and their approvals.
--
-- Conventions as in 0001 (instants as INTEGER microseconds since the epoch, JSON as TEXT).
-- payload and result hold the canonical JSON (RFC 8785 subset) the approvers' digest is
-- computed from; see stellakeys/ceremony/model.py and docs/decisions/0006-ceremonies.md.

CREATE TABLE ceremonies (
    id                 TEXT    PRIMARY KEY NOT NULL,
    type               TEXT    NOT NULL,
    subject            TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('Pending', 'PartiallyApproved',
                                   'Approved', 'Executed', 'Expired', 'Cancelled')),
    threshold          INTEGER NOT NULL CHECK (threshold >= 2),
    required_approvers INTEGER NOT NULL CHECK (required_approvers >= threshold),
    payload            TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL CHECK (expires_at > created_at),
    initiator          TEXT    NOT NULL,
    allowed_approvers  TEXT    NOT NULL DEFAULT '[]',
    executed_at        INTEGER,
    result             TEXT,
    cancelled_at       INTEGER,
    cancel_reason      TEXT,
    -- One-off notifications already sent (expiry-75, expiry-90), as a JSON list.
    notifications_sent TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX idx_ceremonies_state ON ceremonies (state, created_at, id);
CREATE INDEX idx_ceremonies_created ON ceremonies (created_at, id);

CREATE TABLE ceremony_approvals (
    id                    TEXT    PRIMARY KEY NOT NULL,
    ceremony_id           TEXT    NOT NULL REFERENCES ceremonies (id),
    approver              TEXT    NOT NULL,
    decision              TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason                TEXT    NOT NULL,
    approved_at           INTEGER NOT NULL,
    signature_valid       INTEGER NOT NULL CHECK (signature_valid IN (0, 1)),
    signature_key_id      TEXT,
    signature_algorithm   TEXT,
    signature_fingerprint TEXT,
    -- The DSSE envelope exactly as submitted, so the approval can be verified again later.
    envelope              BLOB,
    -- One decision per approver per ceremony.
    UNIQUE (ceremony_id, approver)
);
CREATE INDEX idx_ceremony_approvals_order ON ceremony_approvals (ceremony_id, approved_at, id);

-- Defence in depth, as for keys and the audit log: ceremonies are never deleted, their terms
-- never change, a terminal ceremony never changes at all, and approvals are append-only.
CREATE TRIGGER ceremonies_no_delete BEFORE DELETE ON ceremonies
BEGIN
    SELECT RAISE(ABORT, 'ceremonies are never deleted');
END;
CREATE TRIGGER ceremonies_terms_fixed BEFORE UPDATE OF id, type, subject, threshold,
    required_approvers, payload, created_at, expires_at, initiator, allowed_approvers
    ON ceremonies
BEGIN
    SELECT RAISE(ABORT, 'the terms of a ceremony never change');
END;
CREATE TRIGGER ceremonies_terminal_final BEFORE UPDATE ON ceremonies
    WHEN OLD.state IN ('Executed', 'Expired', 'Cancelled')
BEGIN
    SELECT RAISE(ABORT, 'a ceremony in a terminal state never changes');
END;
CREATE TRIGGER ceremony_approvals_no_update BEFORE UPDATE ON ceremony_approvals
BEGIN
    SELECT RAISE(ABORT, 'ceremony approvals are append-only');
END;
CREATE TRIGGER ceremony_approvals_no_delete BEFORE DELETE ON ceremony_approvals
BEGIN
    SELECT RAISE(ABORT, 'ceremony approvals are append-only');
END;

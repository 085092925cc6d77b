"""Row <-> domain conversion for ceremonies and their approvals (memory and SQLite adapters).

Same conventions as :mod:`stellakeys.storage._codec`: instants as UTC microseconds, JSON as
text. The payload and result are stored as the canonical JSON bytes the model keeps, so the
ceremony digest that approvers sign is recomputed from exactly what was stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState, Decision
from stellakeys.storage._codec import (
    dump_json,
    from_micros,
    opt_from_micros,
    opt_to_micros,
    to_micros,
)

__all__ = [
    "APPROVAL_COLUMNS",
    "CEREMONY_COLUMNS",
    "approval_from_row",
    "approval_sort_key",
    "approval_to_row",
    "ceremony_from_row",
    "ceremony_to_row",
    "mutable_part",
]

CEREMONY_COLUMNS = (
    "id, type, subject, state, threshold, required_approvers, payload, created_at, expires_at,"
    " initiator, allowed_approvers, executed_at, result, cancelled_at, cancel_reason,"
    " notifications_sent"
)
APPROVAL_COLUMNS = (
    "id, ceremony_id, approver, decision, reason, approved_at, signature_valid,"
    " signature_key_id, signature_algorithm, signature_fingerprint, envelope"
)

Row = tuple[Any, ...]


def ceremony_to_row(c: Ceremony) -> Row:
    return (
        c.ceremony_id,
        c.type,
        c.subject,
        c.state.value,
        c.threshold,
        c.required_approvers,
        c.payload_json.decode("utf-8"),
        to_micros(c.created_at),
        to_micros(c.expires_at),
        c.initiator,
        dump_json(list(c.allowed_approvers)),
        opt_to_micros(c.executed_at),
        c.result_json.decode("utf-8") if c.result_json is not None else None,
        opt_to_micros(c.cancelled_at),
        c.cancel_reason,
        dump_json(list(c.notifications_sent)),
    )


def mutable_part(row: Row) -> Row:
    """The columns update_ceremony may change: state, executed_at, result, cancelled_at,
    cancel_reason, notifications_sent."""
    return (row[3], *row[11:16])


def ceremony_from_row(row: Sequence[Any], approvals: Sequence[Approval] = ()) -> Ceremony:
    return Ceremony(
        ceremony_id=row[0],
        type=row[1],
        subject=row[2],
        state=CeremonyState(row[3]),
        threshold=row[4],
        required_approvers=row[5],
        payload_json=row[6].encode("utf-8"),
        created_at=from_micros(row[7]),
        expires_at=from_micros(row[8]),
        initiator=row[9],
        allowed_approvers=tuple(json.loads(row[10])),
        approvals=tuple(approvals),
        executed_at=opt_from_micros(row[11]),
        result_json=row[12].encode("utf-8") if row[12] is not None else None,
        cancelled_at=opt_from_micros(row[13]),
        cancel_reason=row[14],
        notifications_sent=tuple(json.loads(row[15])),
    )


def approval_to_row(a: Approval) -> Row:
    return (
        a.approval_id,
        a.ceremony_id,
        a.approver,
        a.decision.value,
        a.reason,
        to_micros(a.approved_at),
        1 if a.signature_valid else 0,
        a.signature_key_id,
        a.signature_algorithm,
        a.signature_fingerprint,
        bytes(a.envelope_json) if a.envelope_json is not None else None,
    )


def approval_from_row(row: Sequence[Any]) -> Approval:
    return Approval(
        approval_id=row[0],
        ceremony_id=row[1],
        approver=row[2],
        decision=Decision(row[3]),
        reason=row[4],
        approved_at=from_micros(row[5]),
        signature_valid=bool(row[6]),
        signature_key_id=row[7],
        signature_algorithm=row[8],
        signature_fingerprint=row[9],
        envelope_json=bytes(row[10]) if row[10] is not None else None,
    )


def approval_sort_key(row: Sequence[Any]) -> tuple[int, str]:
    """Approvals are listed by approved_at, then approval id."""
    return (row[5], row[0])

"""Row <-> domain conversion for ceremonies and their approvals: the one ceremony codec of
the memory, SQLite and PostgreSQL adapters.

Same conventions as :mod:`stellakeys.storage._codec`: by default instants as UTC microseconds
and arrays as JSON text (memory, SQLite); ``native=True`` keeps aware datetimes and lists,
which psycopg binds to TIMESTAMPTZ and TEXT[] and returns as such (PostgreSQL). The payload
and result are stored as the canonical JSON bytes the model keeps, so the
ceremony digest that approvers sign is recomputed from exactly what was stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState, Decision
from stellakeys.errors import ConflictError, NotFoundError
from stellakeys.storage._codec import (
    check_aware,
    dump_json,
    from_micros,
    opt_check_aware,
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


def _same(value: Any) -> Any:
    return value


def ceremony_to_row(c: Ceremony, *, native: bool = False) -> Row:
    if native:
        return (
            c.ceremony_id,
            c.type,
            c.subject,
            c.state.value,
            c.threshold,
            c.required_approvers,
            c.payload_json.decode("utf-8"),
            check_aware(c.created_at),
            check_aware(c.expires_at),
            c.initiator,
            list(c.allowed_approvers),
            opt_check_aware(c.executed_at),
            c.result_json.decode("utf-8") if c.result_json is not None else None,
            opt_check_aware(c.cancelled_at),
            c.cancel_reason,
            list(c.notifications_sent),
        )
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


def check_mutable(ceremony_id: str, current: Sequence[Any] | None) -> None:
    """``current`` is the stored ``(state,)`` row: refuse a missing or terminal ceremony as the
    port does (the schema's trigger would refuse the update too, less clearly)."""
    if current is None:
        raise NotFoundError(f"no ceremony {ceremony_id}")
    if CeremonyState(current[0]).terminal:
        raise ConflictError(
            f"ceremony {ceremony_id} is {current[0]}: a terminal ceremony never changes"
        )


def mutable_part(row: Row) -> Row:
    """The columns update_ceremony may change: state, executed_at, result, cancelled_at,
    cancel_reason, notifications_sent."""
    return (row[3], *row[11:16])


def ceremony_from_row(
    row: Sequence[Any], approvals: Sequence[Approval] = (), *, native: bool = False
) -> Ceremony:
    time, opt_time, array = (
        (_same, _same, tuple) if native else (from_micros, opt_from_micros, _json_tuple)
    )
    return Ceremony(
        ceremony_id=row[0],
        type=row[1],
        subject=row[2],
        state=CeremonyState(row[3]),
        threshold=row[4],
        required_approvers=row[5],
        payload_json=row[6].encode("utf-8"),
        created_at=time(row[7]),
        expires_at=time(row[8]),
        initiator=row[9],
        allowed_approvers=array(row[10]),
        approvals=tuple(approvals),
        executed_at=opt_time(row[11]),
        result_json=row[12].encode("utf-8") if row[12] is not None else None,
        cancelled_at=opt_time(row[13]),
        cancel_reason=row[14],
        notifications_sent=array(row[15]),
    )


def _json_tuple(text: str) -> tuple[Any, ...]:
    return tuple(json.loads(text))


def approval_to_row(a: Approval, *, native: bool = False) -> Row:
    return (
        a.approval_id,
        a.ceremony_id,
        a.approver,
        a.decision.value,
        a.reason,
        check_aware(a.approved_at) if native else to_micros(a.approved_at),
        a.signature_valid if native else int(a.signature_valid),
        a.signature_key_id,
        a.signature_algorithm,
        a.signature_fingerprint,
        bytes(a.envelope_json) if a.envelope_json is not None else None,
    )


def approval_from_row(row: Sequence[Any], *, native: bool = False) -> Approval:
    return Approval(
        approval_id=row[0],
        ceremony_id=row[1],
        approver=row[2],
        decision=Decision(row[3]),
        reason=row[4],
        approved_at=row[5] if native else from_micros(row[5]),
        signature_valid=bool(row[6]),
        signature_key_id=row[7],
        signature_algorithm=row[8],
        signature_fingerprint=row[9],
        envelope_json=bytes(row[10]) if row[10] is not None else None,
    )


def approval_sort_key(row: Sequence[Any]) -> tuple[int, str]:
    """Approvals are listed by approved_at, then approval id."""
    return (row[5], row[0])

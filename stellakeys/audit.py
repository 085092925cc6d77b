"""The audit log: append-only events in a hash chain.

Each event commits to its predecessor's hash, so a changed event breaks its own hash, a removed
one leaves a gap in ``seq`` and a broken link, and a reordered pair breaks the links around it.
Truncating the tail is the one change a chain cannot show by itself: ``verify_chain`` reports
the head (count and hash) so operators can record it elsewhere and pass it back as
``expected_head``.

Storage adapters call :func:`chain_event` inside their write transaction, after reading the
current head, so concurrent writers still produce one line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from stellakeys.times import format_time

__all__ = [
    "GENESIS_HASH",
    "AuditEvent",
    "AuditQuery",
    "AuditRecord",
    "ChainVerification",
    "EventType",
    "chain_event",
    "verify_chain",
]

GENESIS_HASH = "0" * 64


class EventType:
    """Event type names. Key-rotation events as in the key rotation runbook; ceremony events
    as in the dual-control runbook."""

    KEY_GENERATED = "KEY_GENERATED"
    KEY_IMPORTED = "KEY_IMPORTED"
    KEY_ADDED = "KEY_ADDED"
    KEY_REVOKED = "KEY_REVOKED"
    ANCHOR_CREATED = "ANCHOR_CREATED"
    ANCHOR_DEACTIVATED = "ANCHOR_DEACTIVATED"
    PROOF_SIGNED = "PROOF_SIGNED"
    PROOF_TIMESTAMPED = "PROOF_TIMESTAMPED"
    CEREMONY_INITIATED = "signer.ceremony.initiated"
    CEREMONY_APPROVED = "signer.ceremony.approved"
    CEREMONY_APPROVAL_REJECTED = "signer.ceremony.approval_rejected"
    CEREMONY_THRESHOLD_REACHED = "signer.ceremony.threshold_reached"
    CEREMONY_EXECUTED = "signer.ceremony.executed"
    CEREMONY_EXPIRED = "signer.ceremony.expired"
    CEREMONY_CANCELLED = "signer.ceremony.cancelled"


@attrs.frozen
class AuditRecord:
    """What a change wants to log; the store turns it into a chained :class:`AuditEvent`."""

    event_type: str
    actor: str
    timestamp: datetime
    key_id: str | None = None
    anchor_id: uuid.UUID | None = None
    ceremony_id: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict)
    event_id: uuid.UUID = attrs.field(factory=uuid.uuid4)


@attrs.frozen
class AuditEvent:
    seq: int
    event_id: uuid.UUID
    event_type: str
    actor: str
    timestamp: datetime
    key_id: str | None
    anchor_id: uuid.UUID | None
    ceremony_id: str | None
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def hashed_fields(self) -> dict[str, Any]:
        return _hashed_fields(
            self.seq,
            self.event_id,
            self.event_type,
            self.actor,
            self.timestamp,
            self.key_id,
            self.anchor_id,
            self.ceremony_id,
            self.details,
            self.prev_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        out = self.hashed_fields()
        out["hash"] = self.hash
        return out


def _hashed_fields(
    seq: int,
    event_id: uuid.UUID,
    event_type: str,
    actor: str,
    timestamp: datetime,
    key_id: str | None,
    anchor_id: uuid.UUID | None,
    ceremony_id: str | None,
    details: Mapping[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "event_id": str(event_id),
        "event_type": event_type,
        "actor": actor,
        "timestamp": format_time(timestamp),
        "key_id": key_id,
        "anchor_id": str(anchor_id) if anchor_id is not None else None,
        "ceremony_id": ceremony_id,
        "details": dict(details),
        "prev_hash": prev_hash,
    }


def _digest(fields: Mapping[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def chain_event(head: AuditEvent | None, record: AuditRecord) -> AuditEvent:
    """The event that follows ``head`` (None for the first event of the log)."""
    seq = head.seq + 1 if head is not None else 1
    prev_hash = head.hash if head is not None else GENESIS_HASH
    fields = _hashed_fields(
        seq,
        record.event_id,
        record.event_type,
        record.actor,
        record.timestamp,
        record.key_id,
        record.anchor_id,
        record.ceremony_id,
        record.details,
        prev_hash,
    )
    return AuditEvent(
        seq=seq,
        event_id=record.event_id,
        event_type=record.event_type,
        actor=record.actor,
        timestamp=record.timestamp,
        key_id=record.key_id,
        anchor_id=record.anchor_id,
        ceremony_id=record.ceremony_id,
        details=record.details,
        prev_hash=prev_hash,
        hash=_digest(fields),
    )


@attrs.frozen
class ChainVerification:
    ok: bool
    count: int
    head_hash: str
    #: The first event (by position in the log) at which the chain breaks, and why.
    broken_at: int | None = None
    reason: str | None = None
    #: How the tables differ from the state the events imply (stellakeys.audit_replay), one
    #: line each; filled in by ``KeyManager.verify_audit``. Any difference makes ``ok`` false.
    state_differences: tuple[str, ...] = ()
    #: False when the tables were not compared (a broken chain: the replay would mislead).
    state_checked: bool = False


def verify_chain(
    events: Iterable[AuditEvent], expected_head: str | None = None
) -> ChainVerification:
    """Walk the log in seq order and check every hash and link."""
    prev_hash = GENESIS_HASH
    expected_seq = 1
    count = 0
    for event in events:
        if event.seq != expected_seq:
            return ChainVerification(
                False,
                count,
                prev_hash,
                event.seq,
                f"expected event #{expected_seq}, found #{event.seq}",
            )
        if event.prev_hash != prev_hash:
            return ChainVerification(
                False, count, prev_hash, event.seq, "link to the previous event is broken"
            )
        if _digest(event.hashed_fields()) != event.hash:
            return ChainVerification(
                False, count, prev_hash, event.seq, "event content does not match its hash"
            )
        prev_hash = event.hash
        expected_seq += 1
        count += 1
    if expected_head is not None and expected_head != prev_hash:
        return ChainVerification(
            False, count, prev_hash, None, "head differs from the expected head (truncated?)"
        )
    return ChainVerification(True, count, prev_hash)


@attrs.frozen
class AuditQuery:
    """Filters for reading the log. Patterns are shell-style (``KEY_*``, ``signer.ceremony.*``)."""

    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    key_id: str | None = None
    anchor_id: uuid.UUID | None = None
    ceremony_id: str | None = None
    limit: int | None = None

    def sql_like_prefix(self) -> str | None:
        """A LIKE prefix an adapter can push down (``KEY_*`` -> ``KEY_``), or None."""
        if self.event_type is None:
            return None
        head = self.event_type.split("*", 1)[0].split("?", 1)[0]
        return head or None

    def matches(self, event: AuditEvent) -> bool:
        if self.event_type is not None and not fnmatch.fnmatchcase(
            event.event_type, self.event_type
        ):
            return False
        if self.since is not None and event.timestamp < self.since:
            return False
        if self.until is not None and event.timestamp > self.until:
            return False
        if self.key_id is not None and event.key_id != self.key_id:
            return False
        if self.anchor_id is not None and event.anchor_id != self.anchor_id:
            return False
        return self.ceremony_id is None or event.ceremony_id == self.ceremony_id

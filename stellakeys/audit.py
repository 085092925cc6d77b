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
import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any

import attrs

from stellakeys.times import format_time

__all__ = [
    "GENESIS_HASH",
    "AuditEvent",
    "AuditQuery",
    "AuditRecord",
    "AuditRow",
    "ChainCheck",
    "ChainVerification",
    "EventType",
    "chain_event",
    "event_from_row",
    "format_micros",
    "text_audit_row",
    "text_audit_rows",
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


def _same(a: Any, b: Any) -> bool:
    """Constant-time equality of two hash strings; anything that is not an ASCII string (a
    hostile writer can put any value in a column) is simply unequal."""
    try:
        return bool(hmac.compare_digest(a, b))
    except TypeError:
        return False


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
        if not _same(event.prev_hash, prev_hash):
            return ChainVerification(
                False, count, prev_hash, event.seq, "link to the previous event is broken"
            )
        if not _same(_digest(event.hashed_fields()), event.hash):
            return ChainVerification(
                False, count, prev_hash, event.seq, "event content does not match its hash"
            )
        prev_hash = event.hash
        expected_seq += 1
        count += 1
    return _finish(count, prev_hash, expected_head)


def _finish(count: int, prev_hash: str, expected_head: str | None) -> ChainVerification:
    if expected_head is not None and not _same(expected_head, prev_hash):
        return ChainVerification(
            False, count, prev_hash, None, "head differs from the expected head (truncated?)"
        )
    return ChainVerification(True, count, prev_hash)


# --- the streaming check over rows -----------------------------------------------------------
#
# ``audit verify`` reads every event of the log. Building an AuditEvent per row (two UUIDs, a
# datetime, a parsed details dict, an attrs instance) and re-serialising it cost ~25 us/event;
# the check below works on the rows themselves. An :data:`AuditRow` is what a store's
# ``iter_audit_rows`` yields: the hashed fields already in their canonical text, in the order
# of the SQLite columns::
#
#     (seq, event_id, event_type, key_id, anchor_id, actor, timestamp, ceremony_id,
#      details_json, prev_hash, hash)
#
# The canonical bytes are assembled directly (the keys of _hashed_fields in sorted order, each
# string through the json module's own C encoder, details spliced in as stored: the store
# writes exactly the text json.dumps nests there). When the stored text is not the canonical
# text (an older writer's spelling of a UUID or of the details JSON) the bytes differ and the
# event is recomputed the reference way (parse, then _digest of the parsed fields, as
# verify_chain does), so an event passes exactly when one of the two encodings of its stored
# content hashes to its stored hash; the fast encoding is the reference one whenever the
# stored text is canonical (tests/test_audit_perf_chain.py checks that no event written by a
# store needs the slow path).

AuditRow = tuple[Any, ...]

_ROW_TEMPLATE = (
    '{{"actor":{},"anchor_id":{},"ceremony_id":{},"details":{},"event_id":{},'
    '"event_type":{},"key_id":{},"prev_hash":{},"seq":{},"timestamp":{}}}'
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def _day_text(days: int) -> str:
    return (_EPOCH + timedelta(days=days)).isoformat()[:10]


#: "HH:MM" for each minute of a day and "SS" for each second of a minute: the time of day by
#: two list lookups instead of a datetime (or an f-string with three format specs) per event.
_HHMM = tuple(f"{h:02d}:{m:02d}" for h in range(24) for m in range(60))
_SS = tuple(f"{s:02d}" for s in range(60))


def _second_text(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of whole seconds since the epoch (the date part cached: a log's
    events share days; a date outside datetime's range raises OverflowError, as the datetime
    arithmetic it replaces did)."""
    days, rest = divmod(seconds, 86_400)
    return f"{_day_text(days)}T{_HHMM[rest // 60]}:{_SS[rest % 60]}"


def format_micros(micros: int) -> str:
    """``format_time`` of an instant stored as microseconds since the epoch, without building
    a datetime per event."""
    seconds, us = divmod(micros, 1_000_000)
    if us:
        return f"{_second_text(seconds)}.{us:06d}Z"
    return _second_text(seconds) + "Z"


def text_audit_row(row: Any) -> AuditRow:
    """An audit row as SQLite and the memory store keep it (the instant in microseconds, the
    details as JSON text) as an AuditRow: only the instant needs formatting; every other
    column already holds the text that was hashed."""
    ts = row[6]
    return (
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        # A non-integer instant (a hand-edited row) is read the way the codec reads it.
        format_micros(ts) if type(ts) is int else format_time(_EPOCH + timedelta(microseconds=ts)),
        row[7],
        "{}" if row[8] is None else row[8],
        row[9],
        row[10],
    )


def text_audit_rows(rows: Iterable[Any]) -> Iterator[AuditRow]:
    """``map(text_audit_row, rows)`` for a stream in seq order, which is also time order:
    the text of the last second is kept (consecutive events share it), and the formatter is
    inlined, since this runs once per event of ``audit verify``
    (tests/test_audit_perf_chain.py compares the two on tricky rows)."""
    last_seconds: int | None = None
    last_text = ""
    day, hhmm, ss = _day_text, _HHMM, _SS
    for seq, event_id, kind, key_id, anchor_id, actor, ts, ceremony_id, details, prev, h in rows:
        if type(ts) is int:
            seconds, us = divmod(ts, 1_000_000)
            if seconds != last_seconds:
                days, rest = divmod(seconds, 86_400)
                last_text = f"{day(days)}T{hhmm[rest // 60]}:{ss[rest % 60]}"
                last_seconds = seconds
            text = f"{last_text}.{us:06d}Z" if us else last_text + "Z"
        else:
            text = format_time(_EPOCH + timedelta(microseconds=ts))
        yield (
            seq,
            event_id,
            kind,
            key_id,
            anchor_id,
            actor,
            text,
            ceremony_id,
            "{}" if details is None else details,
            prev,
            h,
        )


def _normalised(row: AuditRow) -> AuditRow:
    """The row with its UUIDs and details in canonical text (raises on unreadable content)."""
    seq, event_id, event_type, key_id, anchor_id, actor, ts, ceremony_id, details, prev, h = row
    parsed = json.loads(details) if isinstance(details, str) and details != "{}" else {}
    return (
        seq,
        str(uuid.UUID(event_id)),
        event_type,
        key_id,
        None if anchor_id is None else str(uuid.UUID(anchor_id)),
        actor,
        ts,
        ceremony_id,
        json.dumps(dict(parsed), sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        prev,
        h,
    )


def _slow_digest(row: AuditRow) -> str:
    """The reference digest: the fields as verify_chain hashes an AuditEvent read from it."""
    seq, event_id, event_type, key_id, anchor_id, actor, ts, ceremony_id, details, prev, _ = row
    return _digest(
        {
            "seq": seq,
            "event_id": event_id,
            "event_type": event_type,
            "actor": actor,
            "timestamp": ts,
            "key_id": key_id,
            "anchor_id": anchor_id,
            "ceremony_id": ceremony_id,
            "details": json.loads(details),
            "prev_hash": prev,
        }
    )


def event_from_row(row: AuditRow, details: Mapping[str, Any] | None = None) -> AuditEvent:
    """The AuditEvent of a (verified) row, for checks written against events (``details``:
    the row's details already parsed)."""
    seq, event_id, event_type, key_id, anchor_id, actor, ts, ceremony_id, text, prev, h = row
    return AuditEvent(
        seq=seq,
        event_id=uuid.UUID(event_id),
        event_type=event_type,
        actor=actor,
        timestamp=datetime.fromisoformat(ts.replace("Z", "+00:00")),
        key_id=key_id,
        anchor_id=None if anchor_id is None else uuid.UUID(anchor_id),
        ceremony_id=ceremony_id,
        details=details if details is not None else json.loads(text) if text != "{}" else {},
        prev_hash=prev,
        hash=h,
    )


class ChainCheck:
    """:func:`verify_chain` over a stream of :data:`AuditRow`: :meth:`feed` passes every row
    on (so the state replay and other checks share the one read), checking each until the
    first break; :meth:`result` after the stream is exhausted."""

    def __init__(self, expected_head: str | None = None) -> None:
        self.expected_head = expected_head
        self.count = 0
        self.head = GENESIS_HASH
        self.broken: ChainVerification | None = None
        #: events whose stored text was not the canonical text (recomputed the reference way)
        self.slow_events = 0

    def feed(self, rows: Iterable[AuditRow]) -> Iterator[AuditRow]:
        # The body of _fast_bytes is inlined (this loop is the whole cost of audit verify);
        # tests/test_audit_perf_chain.py checks that it agrees with the reference bytes by
        # counting the events that needed the slow path (:attr:`slow_events`).
        sha256 = hashlib.sha256
        compare = hmac.compare_digest
        enc = encode_basestring
        prev_hash = GENESIS_HASH
        expected_seq = 1
        it = iter(rows)
        for row in it:
            seq, event_id, kind, key_id, anchor_id, actor, ts, ceremony_id, details, prev, h = row
            reason: str | None = None
            ok = False
            if seq != expected_seq:
                reason = f"expected event #{expected_seq}, found #{seq}"
            else:
                try:
                    linked = compare(prev, prev_hash)
                except TypeError:  # not an ASCII string
                    linked = False
                if not linked:
                    reason = "link to the previous event is broken"
                # type() rather than isinstance: json writes a bool as true, and 1.0 == 1 as
                # 1.0; a non-string where a string belongs raises TypeError in enc().
                elif type(seq) is int and type(details) is str:
                    try:
                        text = (
                            f'{{"actor":{enc(actor)},'
                            f'"anchor_id":{"null" if anchor_id is None else enc(anchor_id)},'
                            '"ceremony_id":'
                            f"{'null' if ceremony_id is None else enc(ceremony_id)},"
                            f'"details":{details},"event_id":{enc(event_id)},'
                            f'"event_type":{enc(kind)},'
                            f'"key_id":{"null" if key_id is None else enc(key_id)},'
                            # prev equals prev_hash, a hex digest: nothing to escape.
                            f'"prev_hash":"{prev_hash}","seq":{seq},"timestamp":{enc(ts)}}}'
                        )
                        ok = compare(sha256(text.encode()).hexdigest(), h)
                    except TypeError:
                        ok = False
                if reason is None and not ok:
                    self.slow_events += 1
                    row, reason = self._slow(row)
            if reason is not None:
                self.count, self.head = expected_seq - 1, prev_hash
                self.broken = ChainVerification(False, self.count, prev_hash, row[0], reason)
                yield row
                # Later rows are passed on unchecked, for checks that read the whole log.
                yield from it
                return
            prev_hash = h
            expected_seq += 1
            yield row
        self.count, self.head = expected_seq - 1, prev_hash

    @staticmethod
    def _slow(row: AuditRow) -> tuple[AuditRow, str | None]:
        bad = "event content does not match its hash"
        try:
            canonical = _normalised(row)
            ok = _same(_slow_digest(canonical), row[10])
        except (TypeError, ValueError, AttributeError):
            return row, bad
        return (canonical, None) if ok else (row, bad)

    def result(self) -> ChainVerification:
        if self.broken is not None:
            return self.broken
        return _finish(self.count, self.head, self.expected_head)


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

"""Row <-> domain conversion shared by the memory and SQLite adapters.

A row is a tuple of primitives (str, int, bytes, None) in the column order of the SQLite
schema (``migrations/sqlite``). The SQLite adapter selects exactly these columns; the memory
adapter stores these tuples too, so both adapters have the same semantics by construction:
instants normalised to UTC microseconds, JSON that must survive a round trip, and callers
that can never mutate stored state through a dict they passed in or got back.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.errors import ConflictError, ProofIntegrityError
from stellakeys.revocation import RevocationReason, legacy_reason
from stellakeys.storage.ports import AuditStateRows, ProofRecord
from stellakeys.times import format_time

if TYPE_CHECKING:
    # Imported where a row is decoded: a verification reads no key or audit row, so their
    # modules (and attrs classes) stay unloaded (issue 20: CLI start-up).
    from stellakeys.audit import AuditEvent, AuditQuery
    from stellakeys.keys import KeyRecord

_T = TypeVar("_T")

__all__ = [
    "ANCHOR_COLUMNS",
    "AUDIT_COLUMNS",
    "HISTORY_COLUMNS",
    "KEY_COLUMNS",
    "PROOF_COLUMNS",
    "anchor_from_row",
    "anchor_to_row",
    "audit_from_row",
    "audit_state_rows",
    "audit_to_row",
    "check_history_belongs",
    "check_history_update",
    "check_reason_known",
    "check_proof_digest",
    "check_query",
    "dump_json",
    "feed_version_conflict",
    "from_micros",
    "history_from_row",
    "history_sort_key",
    "history_to_row",
    "key_from_row",
    "key_to_row",
    "load_json",
    "opt_from_micros",
    "opt_to_micros",
    "proof_from_row",
    "proof_to_row",
    "to_micros",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

KEY_COLUMNS = (
    "key_id, algorithm, public_key, fingerprint, created_at, profile, key_store_uri, origin,"
    " metadata"
)
ANCHOR_COLUMNS = "id, purl_pattern, allowed_predicate_types, policy_version, created_at, active"
HISTORY_COLUMNS = (
    "id, anchor_id, key_id, algorithm, public_key, fingerprint, added_at, revoked_at,"
    " revoke_reason, expires_at, metadata"
)
AUDIT_COLUMNS = (
    "seq, event_id, event_type, key_id, anchor_id, actor, timestamp, ceremony_id, details,"
    " prev_hash, hash"
)
PROOF_COLUMNS = "digest, envelope_json, created_at"

Row = tuple[Any, ...]


# --- scalars --------------------------------------------------------------------------------


def check_aware(value: datetime) -> datetime:
    """Refuse naive datetimes, as :func:`to_micros` does: PostgreSQL would silently read one
    in the session time zone and move every validity window."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: add a zone")
    return value


def opt_check_aware(value: datetime | None) -> datetime | None:
    return None if value is None else check_aware(value)


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch. Naive datetimes are refused: stored in the wrong zone
    they would silently move every validity window."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: add a zone")
    # Integer division of timedeltas is exact (no float), for any year datetime supports.
    return (value - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def opt_to_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def opt_from_micros(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def dump_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, compact, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_json(text: str | None) -> Any:
    # Most metadata is empty; skipping the parser for it is measurable on the lookup path.
    if text is None or text == "{}":
        return {}
    return json.loads(text)


def _opt_uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _opt_str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


# --- keys -----------------------------------------------------------------------------------


def key_to_row(r: KeyRecord) -> Row:
    return (
        r.key_id,
        r.algorithm,
        r.public_key_pem,
        r.fingerprint,
        to_micros(r.created_at),
        r.profile,
        r.key_store_uri,
        r.origin,
        dump_json(dict(r.metadata)),
    )


def key_from_row(row: Sequence[Any]) -> KeyRecord:
    from stellakeys.keys import KeyRecord

    return KeyRecord(
        key_id=row[0],
        algorithm=row[1],
        public_key_pem=row[2],
        fingerprint=row[3],
        created_at=from_micros(row[4]),
        profile=row[5],
        key_store_uri=row[6],
        origin=row[7],
        metadata=load_json(row[8]),
    )


# --- anchors and history --------------------------------------------------------------------


def anchor_to_row(a: TrustAnchor) -> Row:
    """The anchor's own columns (history rows are separate; index_key is appended by callers)."""
    return (
        str(a.anchor_id),
        a.purl_pattern,
        dump_json(list(a.allowed_predicate_types)),
        a.policy_version,
        to_micros(a.created_at),
        1 if a.active else 0,
    )


def anchor_from_row(
    row: Sequence[Any],
    history: tuple[KeyHistoryEntry, ...],
    anchor_id: uuid.UUID | None = None,
) -> TrustAnchor:
    return TrustAnchor(
        anchor_id=uuid.UUID(row[0]) if anchor_id is None else anchor_id,
        purl_pattern=row[1],
        allowed_predicate_types=tuple(load_json(row[2]) or ()),
        policy_version=row[3],
        created_at=from_micros(row[4]),
        key_history=history,
        active=bool(row[5]),
    )


def history_to_row(e: KeyHistoryEntry) -> Row:
    check_reason_known(e.revoke_reason)
    return (
        str(e.entry_id),
        str(e.anchor_id),
        e.key_id,
        e.algorithm,
        e.public_key_pem,
        e.fingerprint,
        to_micros(e.added_at),
        opt_to_micros(e.revoked_at),
        e.revoke_reason,
        opt_to_micros(e.expires_at),
        dump_json(dict(e.metadata)),
    )


def history_from_row(row: Sequence[Any], anchor_id: uuid.UUID | None = None) -> KeyHistoryEntry:
    """``anchor_id``, when the caller has it parsed already, saves a UUID parse per entry."""
    # Positional arguments (in KeyHistoryEntry's field order) halve the constructor's cost on
    # the verification path; the conformance suite's round trips catch any field mix-up.
    return KeyHistoryEntry(
        uuid.UUID(row[1]) if anchor_id is None else anchor_id,
        row[2],
        row[3],
        row[4],
        row[5],
        from_micros(row[6]),
        None if row[7] is None else from_micros(row[7]),
        row[8],
        None if row[9] is None else from_micros(row[9]),
        load_json(row[10]),
        uuid.UUID(row[0]),
    )


def history_sort_key(row: Sequence[Any]) -> tuple[int, str]:
    """(added_at, key_id): the order of an anchor's history in every adapter."""
    return (row[6], row[2])


def check_history_belongs(anchor: TrustAnchor) -> None:
    for e in anchor.key_history:
        if e.anchor_id != anchor.anchor_id:
            raise ValueError(
                f"history entry for key {e.key_id!r} names anchor {e.anchor_id},"
                f" not {anchor.anchor_id}"
            )


def check_history_update(
    key_id: str,
    old: tuple[Any, str | None, Any],
    new: tuple[Any, str | None, Any],
) -> None:
    """``(revoked_at, revoke_reason, expires_at)`` before and after an update may only get
    stricter: NULL -> a time or an earlier time, a reason only for a strictly stronger one
    (stellakeys.revocation). The rule the SQL triggers of migration 0003 enforce, checked
    here first so every adapter refuses with the same ConflictError (times may be datetimes
    or microseconds, as long as old and new are alike)."""
    old_at, old_reason, old_expires = old
    new_at, new_reason, new_expires = new
    why = None
    if old_at is not None and (new_at is None or new_at > old_at):
        why = "its time can only move earlier"
    elif old_expires is not None and (new_expires is None or new_expires > old_expires):
        why = "its expiry can only move earlier"
    elif new_reason is not None and new_reason not in _REASONS:
        why = f"{new_reason!r} is not a revocation reason"
    elif (
        old_reason is not None
        and new_reason != old_reason
        and (new_reason is None or _REASONS[new_reason] <= legacy_reason(old_reason).strength)
    ):
        why = "its reason can only be made stronger"
    if why is not None:
        raise ConflictError(
            f"key {key_id!r}: a revocation can only be made earlier or stronger ({why})"
        )


_REASONS = {r.value: r.strength for r in RevocationReason}


def check_reason_known(reason: str | None) -> None:
    """Only words of the vocabulary are stored (the schema refuses others as well)."""
    if reason is not None and reason not in _REASONS:
        raise ValueError(
            f"revocation reason {reason!r} is not stored as such: parse it with"
            " stellakeys.revocation.parse_reason first"
        )


# --- proofs ---------------------------------------------------------------------------------


def check_proof_digest(digest: str, body: bytes) -> None:
    """A proof's bytes must hash to its address (``sha256:<hex>``); ProofIntegrityError,
    naming both digests, otherwise. Run on every write and every read: what the store returns
    is evidence, not truth."""
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if not hmac.compare_digest(actual.encode(), digest.encode()):
        raise ProofIntegrityError(digest, actual)


def check_page_limit(limit: int | None) -> None:
    """``iter_proof_candidates``' page size: None (no limit) or at least 1. (A negative LIMIT
    means "no limit" to SQLite and is an error to PostgreSQL: refused alike everywhere.)"""
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"a page limit must be an integer of at least 1, not {limit!r}")


def proof_to_row(p: ProofRecord) -> Row:
    body = bytes(p.envelope_json)
    check_proof_digest(p.digest, body)
    return (p.digest, body, to_micros(p.created_at))


def group_left_join(
    rows: Iterable[Sequence[Any]],
    parent_width: int,
    child_key: int,
    make: Callable[[Sequence[Any], list[Sequence[Any]]], _T],
) -> Iterator[_T]:
    """Parents with their children from the rows of ``parent LEFT JOIN child`` ordered by
    parent: columns ``[:parent_width]`` are the parent (its id first), the rest a child. Column
    ``child_key`` (a non-null column of the child table) is NULL when the parent has no
    children; other child columns may be COALESCEd. One query instead of one per parent."""
    current: Sequence[Any] | None = None
    children: list[Sequence[Any]] = []
    for row in rows:
        if current is None or row[0] != current[0]:
            if current is not None:
                yield make(current, children)
            current, children = row, []
        if row[child_key] is not None:
            children.append(row[parent_width:])
    if current is not None:
        yield make(current, children)


def group_proofs(
    rows: Iterable[Sequence[Any]],
    make: Callable[[Sequence[Any], tuple[bytes, ...]], ProofRecord],
) -> Iterator[ProofRecord]:
    """Proofs from ``(digest, envelope, created_at, token)`` rows of proofs LEFT JOIN tokens."""
    return group_left_join(
        rows, 3, 3, lambda p, tokens: make(p, tuple(bytes(t[0]) for t in tokens))
    )


def proof_from_row(row: Sequence[Any], tokens: tuple[bytes, ...]) -> ProofRecord:
    body = bytes(row[1])
    check_proof_digest(row[0], body)
    return ProofRecord(
        digest=row[0],
        envelope_json=body,
        created_at=from_micros(row[2]),
        timestamp_tokens=tokens,
    )


def feed_version_conflict(version: int, highest: int) -> str:
    """The ConflictError text of every adapter for a feed version that is not the next one."""
    if version <= highest:
        return f"feed version {version} is already recorded (the latest is {highest})"
    return f"feed version {version} would leave a gap: the latest recorded is {highest}"


# --- audit ----------------------------------------------------------------------------------


def audit_to_row(e: AuditEvent) -> Row:
    return (
        e.seq,
        str(e.event_id),
        e.event_type,
        e.key_id,
        _opt_str(e.anchor_id),
        e.actor,
        to_micros(e.timestamp),
        e.ceremony_id,
        dump_json(dict(e.details)),
        e.prev_hash,
        e.hash,
    )


@functools.cache
def _audit_event() -> type[AuditEvent]:
    # Once per process, not an import statement per row: audit reads stream many rows.
    from stellakeys.audit import AuditEvent

    return AuditEvent


def audit_from_row(row: Sequence[Any]) -> AuditEvent:
    return _audit_event()(
        seq=row[0],
        event_id=uuid.UUID(row[1]),
        event_type=row[2],
        key_id=row[3],
        anchor_id=_opt_uuid(row[4]),
        actor=row[5],
        timestamp=from_micros(row[6]),
        ceremony_id=row[7],
        details=load_json(row[8]),
        prev_hash=row[9],
        hash=row[10],
    )


def check_query(query: AuditQuery) -> None:
    """Refuse what an SQL adapter would refuse, so every adapter agrees."""
    opt_to_micros(query.since)
    opt_to_micros(query.until)
    if query.limit is not None and query.limit < 0:
        raise ValueError(f"audit query limit must be >= 0, not {query.limit}")


# --- the tables as audit verify compares them -------------------------------------------------


def instant_text(value: Any) -> str:
    """``format_time`` of a stored instant: microseconds (SQLite, memory; through the cached
    formatter, which gives the same text) or a driver's aware datetime (PostgreSQL). Anything
    else is read as :func:`from_micros` reads it (and refused where it refuses)."""
    if type(value) is int:
        # Imported here: a verification never formats an audit instant (issue 20: start-up).
        from stellakeys.audit import format_micros

        return format_micros(value)
    if isinstance(value, datetime):
        return format_time(value)
    return format_time(from_micros(value))


def audit_state_rows(
    keys: Iterable[Sequence[Any]],
    anchors: Iterable[Sequence[Any]],
    history: Iterable[Sequence[Any]],
    *,
    native: bool = False,
) -> AuditStateRows:
    """:class:`AuditStateRows` from the stored columns, in any adapter's native values.

    ``keys``: (key_id, algorithm, fingerprint), ordered as list_keys; ``anchors``: (id,
    purl_pattern, policy_version, allowed_predicate_types, active), ordered as list_anchors;
    ``history``: (anchor_id, key_id, added_at, revoked_at, revoke_reason, expires_at,
    fingerprint), ordered by added_at, key_id within an anchor. Each value is converted exactly as
    list_keys / list_anchors convert it (``native``: PostgreSQL's UUIDs, lists and datetimes;
    otherwise text ids, which are parsed, so an id the parser refuses is refused here too, and
    JSON text), and history rows of an id that is not an anchor's are left out, as
    list_anchors leaves them.
    """
    # History grouped per anchor and concatenated in the anchors' order, as list_anchors
    # returns it (so whichever row won a clash of ids before wins now).
    buckets: dict[Any, tuple[str, list[tuple[Any, ...]]]] = {}
    anchor_rows = []
    for a in anchors:
        raw_id, types = a[0], a[3]
        aid = str(raw_id) if native else str(uuid.UUID(raw_id))
        buckets[raw_id] = (aid, [])
        names = tuple(types) if native else tuple(load_json(types) or ())
        anchor_rows.append((aid, a[1], a[2], ",".join(names), "true" if a[4] else "false"))
    text = instant_text
    for h in history:
        bucket = buckets.get(h[0])
        if bucket is None:
            continue
        revoked, expires = h[3], h[5]
        bucket[1].append(
            (
                bucket[0],
                h[1],
                text(h[2]),
                None if revoked is None else text(revoked),
                h[4],
                None if expires is None else text(expires),
                h[6],
            )
        )
    history_rows = [row for _, rows in buckets.values() for row in rows]
    return AuditStateRows([(k[0], k[1], k[2]) for k in keys], anchor_rows, history_rows)

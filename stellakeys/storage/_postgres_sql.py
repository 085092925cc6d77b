"""PostgreSQL side of the SQL core: the dialect, error mapping, statements and row decoders
shared by the repositories in :mod:`._postgres_repos`.

psycopg returns aware datetimes, UUIDs, lists and bytes already, so most rows become domain
objects with one positional call; column lists are in the domain classes' field order.
"""

# S608: every statement is assembled from module constants (column lists); values are always
# bound parameters, never formatted into SQL.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader

import stellakeys.storage._ceremony_codec as cc
import stellakeys.storage._codec as codec
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent
from stellakeys.ceremony.model import Ceremony
from stellakeys.errors import StorageError
from stellakeys.storage._sql import FETCH, Dialect, SqlCore, glob_to_like, one_line
from stellakeys.storage.ports import ProofRecord

Conn = psycopg.Connection[tuple[Any, ...]]
Row = tuple[Any, ...]


def storage_error(exc: BaseException, doing: str) -> StorageError:
    """A one-line StorageError (no SQL, no parameters, no DETAIL with values)."""
    message = one_line(exc)
    if isinstance(exc, pg_errors.LockNotAvailable):
        message += " (another writer held the write lock longer than the lock timeout)"
    elif isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        message += " (the stellakeys schema is missing or outdated: run stellaops db migrate)"
    elif isinstance(exc, psycopg.OperationalError):
        message += " (connection to PostgreSQL lost)"
    return StorageError(f"PostgreSQL {doing} failed: {message}")


# jsonb loading for every connection of the PostgreSQL store (moved from postgres.py).


class _JsonbLoader(Loader):
    """jsonb -> Python. Most metadata is ``{}``; skipping the parser for it is measurable on
    the verification path (as in the SQLite codec). Each call returns a fresh dict, so a
    caller can never change another caller's (or the store's) value."""

    def load(self, data: Buffer) -> Any:
        if data == b"{}":
            return {}
        return json.loads(bytes(data))


ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_loader("jsonb", _JsonbLoader)


check_aware = codec.check_aware
opt_aware = codec.opt_check_aware


def proof_from_pg_row(row: Sequence[Any], tokens: tuple[bytes, ...]) -> ProofRecord:
    # psycopg returns aware datetimes and bytes already: no conversion, unlike SQLite's rows.
    body = bytes(row[1])
    codec.check_proof_digest(row[0], body)
    return ProofRecord(row[0], body, row[2], tokens)


# Column lists in the positional order of the domain classes' fields, so a row becomes an
# object with one call and no per-field work (the lookup path builds thousands of these).
_KEY_COLS = (
    "key_id, algorithm, public_key, fingerprint, created_at, profile, key_store_uri, origin,"
    " metadata"
)
_HISTORY_COLS = (
    "anchor_id, key_id, algorithm, public_key, fingerprint, added_at, revoked_at,"
    " revoke_reason, expires_at, metadata, id"
)
_HISTORY_SELECT = (
    "h.anchor_id, h.key_id, h.algorithm, h.public_key, h.fingerprint, h.added_at, h.revoked_at,"
    " h.revoke_reason, h.expires_at, COALESCE(h.metadata, '{}'::jsonb), h.id"
)
_ANCHOR_SELECT = (
    "a.id, a.purl_pattern, a.allowed_predicate_types, a.policy_version, a.created_at, a.active"
)
_AUDIT_COLS = "seq, event_id, event_type, actor, timestamp, key_id, anchor_id, ceremony_id"
_AUDIT_SELECT = f"{_AUDIT_COLS}, COALESCE(details, '{{}}'::jsonb), prev_hash, hash"

# An anchor with its history in one round trip: a LEFT JOIN ordered so each anchor's rows are
# contiguous and its history comes out in (added_at, key_id) order.
_ANCHORS_JOIN = (
    f"SELECT {_ANCHOR_SELECT}, {_HISTORY_SELECT} FROM signer.trust_anchors AS a"
    " LEFT JOIN signer.key_history AS h ON h.anchor_id = a.id"
)
_ANCHORS_ORDER = " ORDER BY a.created_at, a.id, h.added_at, h.key_id"
_ANCHOR_BY_ID = f"{_ANCHORS_JOIN} WHERE a.id = %s{_ANCHORS_ORDER}"
# Served by the partial index idx_trust_anchors_index_key (index_key) WHERE active, then
# idx_key_history_validity (anchor_id, ...) for each hit. One statement for any number of
# keys, so it is prepared once per connection.
_ANCHORS_BY_INDEX = f"{_ANCHORS_JOIN} WHERE a.index_key = ANY(%s) AND a.active{_ANCHORS_ORDER}"
# Index keys below K are those in ["K/", "K0"): '0' follows '/' in byte order, which is the
# column's order (COLLATE "C"), so this is a range scan of idx_trust_anchors_index_key.
_ANCHORS_BELOW_INDEX = (
    f"{_ANCHORS_JOIN} WHERE a.index_key >= %s AND a.index_key < %s AND a.active{_ANCHORS_ORDER}"
)

# Ceremonies with their approvals, one round trip (as anchors with their history).
_CEREMONY_SELECT = (
    "c.id, c.type, c.subject, c.state, c.threshold, c.required_approvers, c.payload::text,"
    " c.created_at, c.expires_at, c.initiator, c.allowed_approvers, c.executed_at,"
    " c.result::text, c.cancelled_at, c.cancel_reason, c.notifications_sent"
)
_CEREMONIES_JOIN = (
    f"SELECT {_CEREMONY_SELECT}, a.id, a.ceremony_id, a.approver, a.decision, a.reason,"
    " a.approved_at, a.signature_valid, a.signature_key_id, a.signature_algorithm,"
    " a.signature_fingerprint, a.envelope FROM signer.ceremonies AS c"
    " LEFT JOIN signer.ceremony_approvals AS a ON a.ceremony_id = c.id"
)
_CEREMONIES_ORDER = " ORDER BY c.created_at, c.id, a.approved_at, a.id"


POSTGRES: Final = Dialect(
    name="PostgreSQL",
    param="%s",
    schema="signer.",
    native=True,
    json_cast="::jsonb",
    glob_op="LIKE",
    glob=glob_to_like,
    time=check_aware,
    uuid=lambda value: value,
    bool=bool,
    time_out=lambda value: value.astimezone(UTC),
    proof_row=proof_from_pg_row,
    audit_select=_AUDIT_SELECT,
    audit_row=lambda row: AuditEvent(*row),
    error_type=psycopg.Error,
    storage_error=storage_error,
)


def _history_entry(row: Sequence[Any]) -> KeyHistoryEntry:
    return KeyHistoryEntry(*row)


def _group_anchors(rows: Iterable[Row]) -> list[TrustAnchor]:
    """Rows of _ANCHORS_JOIN (anchor columns 0-5, history 6-16) -> anchors with history."""
    return list(
        codec.group_left_join(
            rows, 6, 16, lambda a, history: _anchor(a, [KeyHistoryEntry(*h) for h in history])
        )
    )


def _anchor(row: Sequence[Any], history: list[KeyHistoryEntry]) -> TrustAnchor:
    return TrustAnchor(row[0], row[1], tuple(row[2]), row[3], row[4], tuple(history), row[5])


def _group_ceremonies(rows: Iterable[Row]) -> list[Ceremony]:
    """Rows of _CEREMONIES_JOIN (ceremony columns 0-15, approval 16-26) -> ceremonies."""
    return list(
        codec.group_left_join(
            rows,
            16,
            16,
            lambda c, approvals: cc.ceremony_from_row(
                c, [cc.approval_from_row(a, native=True) for a in approvals], native=True
            ),
        )
    )


class PgCore(SqlCore):
    """The PostgreSQL side of the plumbing: statements with error mapping, and streaming
    through named server-side cursors."""

    __slots__ = ("_head", "_names")

    dialect = POSTGRES

    _conn: Conn
    # The audit head once read (or appended) in this write transaction: the row lock keeps
    # it current, so further appends skip the query.
    _head: AuditEvent | None
    _names: int

    def __init__(self, conn: Conn, *, writable: bool) -> None:
        self._start(conn, writable)
        self._names = 0
        self._head = None

    def _exec(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> psycopg.Cursor[Row]:
        try:
            return self._conn.execute(sql, params)
        except psycopg.Error as exc:
            raise storage_error(exc, "statement") from exc

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        """Rows fetched FETCH at a time through a server-side cursor, so a long audit log is
        never held in memory; other queries may run while it is open."""
        self._names += 1
        cursor = self._conn.cursor(name=f"stellakeys_{self._names}")
        cursor.itersize = FETCH
        try:
            cursor.execute(sql, params)
        except psycopg.Error as exc:
            raise storage_error(exc, "query") from exc
        self._cursors.append(cursor)
        return self._rows(cursor)

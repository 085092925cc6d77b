"""The SQL core shared by the SQLite and PostgreSQL adapters.

One thin layer, not an ORM (docs/decisions/0019-one-sql-core.md): each adapter keeps its own
hand-written statements where the two databases genuinely differ (SQLite's separate history
query per chunk of anchors, PostgreSQL's one LEFT JOIN and ``ON CONFLICT ... RETURNING``), and
everything that was written twice lives here once:

* :class:`Dialect`: placeholders, table prefix, the shell-pattern operator, how an instant,
  a UUID and an audit row cross the boundary, and the driver's error type and mapping;
* :class:`SqlCore`: the transaction plumbing (finished/read-only checks, one-row and all-row
  queries with error mapping, batched streaming that stops when the transaction ends);
* :class:`AuditReads`: the audit query (``audit_events`` / ``iter_audit``) built from the
  dialect.

The repositories of each adapter (keys, intents, anchors + key history, proofs + timestamps
+ feed versions, ceremonies + policy, audit) are mixins over its core; the transaction object
is their composition, so callers keep calling ``tx.get_key(...)`` and a method call costs
what it did before (one class attribute lookup, no delegation hop on the hot path).
"""

# S608: statements are assembled from module constants and the dialect's fixed fragments;
# values are always bound parameters.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, Self, TypeVar

import attrs

import stellakeys.storage._codec as codec
from stellakeys.errors import NotFoundError, StorageError
from stellakeys.times import format_time

if TYPE_CHECKING:
    # The audit, ceremony and intent repositories import their models where they use them: a
    # verification opens this core but never touches those tables (issue 20: CLI start-up).
    from stellakeys.audit import AuditEvent, AuditQuery, AuditRow
    from stellakeys.ceremony.policy import PolicyVersion
    from stellakeys.intents import KeyIntent
    from stellakeys.storage.ports import AuditStateRows, ProofRecord

__all__ = [
    "AnchorCommon",
    "AuditReads",
    "CeremonyCommon",
    "Dialect",
    "IntentRepository",
    "ProofCommon",
    "SqlCore",
    "SqlStore",
    "chunks",
    "glob_to_like",
    "one_line",
]

_T = TypeVar("_T")
Row = tuple[Any, ...]

#: Rows per round trip of a streaming read.
FETCH: Final = 256
#: Host parameters per IN list; long lists stop being useful well before SQLite's limit.
CHUNK: Final = 500


def one_line(exc: BaseException) -> str:
    """The first line of a driver error: no SQL, no parameters, no DETAIL with values."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def glob_to_like(pattern: str) -> str:
    """A shell pattern with only ``*`` and ``?`` as a LIKE pattern (backslash escapes)."""
    out = []
    for ch in pattern:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _same(value: _T) -> _T:
    return value


@attrs.frozen
class Dialect:
    """What differs between the SQL databases, as data: the core and the shared repositories
    read it instead of branching on the database."""

    #: for messages: "SQLite" / "PostgreSQL"
    name: str
    #: the positional placeholder: "?" / "%s"
    param: str
    #: prefix of every table name: "" / "signer."
    schema: str
    #: True when the driver binds and returns datetimes, lists and JSON natively (the codecs'
    #: ``native`` flag); False for microseconds and JSON text
    native: bool
    #: appended to the placeholder of a JSON column ("::jsonb" on PostgreSQL)
    json_cast: str
    #: the case-sensitive shell-pattern operator and the pattern converter for it
    glob_op: str
    glob: Callable[[str], str]
    #: an instant / a UUID / a boolean as a bound parameter, and an instant read back
    time: Callable[[datetime], Any]
    uuid: Callable[[Any], Any]
    bool: Callable[[bool], Any]
    time_out: Callable[[Any], datetime]
    #: a proofs LEFT JOIN proof_timestamps row and its tokens -> ProofRecord
    proof_row: Callable[[Sequence[Any], tuple[bytes, ...]], ProofRecord]
    #: the columns selected for an AuditEvent and the row decoder
    audit_select: str
    audit_row: Callable[[Sequence[Any]], AuditEvent]
    #: the driver's base error class and its mapping to a one-line StorageError
    error_type: type[Exception]
    storage_error: Callable[[Any, str], StorageError]

    def table(self, name: str) -> str:
        return self.schema + name

    def upsert(self, table: str, columns: str, key: str, json_columns: Collection[str] = ()) -> str:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every other column: the same words on
        SQLite (3.24+) and PostgreSQL; a REPLACE would delete and re-insert the row."""
        names = [c.strip() for c in columns.split(",")]
        marks = ", ".join(self.param + (self.json_cast if n in json_columns else "") for n in names)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != key)
        return (
            f"INSERT INTO {self.table(table)} ({columns}) VALUES ({marks})"
            f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )


class _Cursor(Protocol):
    def fetchmany(self, size: int = ...) -> Sequence[Any]: ...
    def close(self) -> None: ...


class SqlCore:
    """Transaction plumbing. Subclasses set :attr:`dialect` and keep the driver connection in
    ``_conn``; the streaming cursor of each dialect is opened by its ``_stream``."""

    __slots__ = ("_conn", "_cursors", "_writable", "open")

    dialect: ClassVar[Dialect]

    _conn: Any
    _cursors: list[Any]
    _writable: bool
    open: bool

    def _start(self, conn: Any, writable: bool) -> None:
        self._conn = conn
        self._writable = writable
        # Cursors of streaming reads, closed when the transaction ends.
        self._cursors = []
        self.open = True

    def _check(self) -> None:
        if not self.open:
            raise StorageError("the transaction is finished; open a new one")

    def _check_write(self) -> None:
        self._check()
        if not self._writable:
            # SQLite would silently upgrade a deferred read transaction to a write one,
            # bypassing the writer serialisation; PostgreSQL's READ ONLY would fail later
            # and abort the transaction. Refuse up front, the same way on both.
            raise StorageError("write inside a read-only transaction")

    def _all(self, sql: str, params: Any = ()) -> list[Row]:
        try:
            rows: list[Row] = self._conn.execute(sql, params).fetchall()
        except self.dialect.error_type as exc:
            raise self.dialect.storage_error(exc, "query") from exc
        return rows

    def _one(self, sql: str, params: Any = ()) -> Row | None:
        try:
            row: Row | None = self._conn.execute(sql, params).fetchone()
        except self.dialect.error_type as exc:
            raise self.dialect.storage_error(exc, "query") from exc
        return row

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        raise NotImplementedError  # pragma: no cover - every dialect defines it

    def _write(self, sql: str, params: Any = ()) -> int:
        """A statement that cannot violate a constraint; the number of rows it changed."""
        try:
            return int(self._conn.execute(sql, params).rowcount)
        except self.dialect.error_type as exc:
            raise self.dialect.storage_error(exc, "statement") from exc

    def _rows(self, cursor: _Cursor) -> Iterator[Row]:
        while True:
            if not self.open:
                raise StorageError("the transaction ended while its rows were being read")
            try:
                rows = cursor.fetchmany(FETCH)
            except self.dialect.error_type as exc:
                raise self.dialect.storage_error(exc, "query") from exc
            if not rows:
                return
            yield from rows

    def finish(self) -> None:
        """Called when the transaction ends (after COMMIT/ROLLBACK): its streams stop."""
        self.open = False
        for cursor in self._cursors:
            with contextlib.suppress(self.dialect.error_type):  # gone with the transaction
                cursor.close()
        self._cursors.clear()


class IntentRepository(SqlCore):
    """Key lifecycle intents (decision 0016): the whole repository, one text for both."""

    __slots__ = ()

    def put_intent(self, intent: KeyIntent) -> None:
        import stellakeys.storage._intent_codec as ic

        self._check_write()
        d = self.dialect
        sql = d.upsert("key_intents", ic.INTENT_COLUMNS, "key_id", ("params",))
        self._write(sql, ic.intent_to_row(intent, native=d.native))

    def get_intent(self, key_id: str) -> KeyIntent | None:
        import stellakeys.storage._intent_codec as ic

        self._check()
        d = self.dialect
        row = self._one(
            f"SELECT {ic.INTENT_COLUMNS} FROM {d.table('key_intents')} WHERE key_id = {d.param}",
            (key_id,),
        )
        return None if row is None else ic.intent_from_row(row, native=d.native)

    def list_intents(self) -> list[KeyIntent]:
        import stellakeys.storage._intent_codec as ic

        self._check()
        d = self.dialect
        rows = self._all(
            f"SELECT {ic.INTENT_COLUMNS} FROM {d.table('key_intents')} ORDER BY created_at, key_id"
        )
        return [ic.intent_from_row(r, native=d.native) for r in rows]

    def delete_intent(self, key_id: str) -> None:
        self._check_write()
        d = self.dialect
        self._write(f"DELETE FROM {d.table('key_intents')} WHERE key_id = {d.param}", (key_id,))


class AnchorCommon(SqlCore):
    """The part of the anchor repository whose SQL is the same on both dialects."""

    __slots__ = ()

    def set_anchor_active(self, anchor_id: uuid.UUID, active: bool) -> None:
        self._check_write()
        d = self.dialect
        changed = self._write(
            f"UPDATE {d.table('trust_anchors')} SET active = {d.param} WHERE id = {d.param}",
            (d.bool(active), d.uuid(anchor_id)),
        )
        if changed == 0:
            raise NotFoundError(f"no trust anchor {anchor_id}")


class ProofCommon(SqlCore):
    """The part of the proof repository whose SQL is the same on both dialects."""

    __slots__ = ()

    def iter_proofs(self) -> Iterator[ProofRecord]:
        self._check()
        d = self.dialect
        rows = self._stream(
            "SELECT p.digest, p.envelope_json, p.created_at, t.token"
            f" FROM {d.table('proofs')} AS p"
            f" LEFT JOIN {d.table('proof_timestamps')} AS t ON t.digest = p.digest"
            " ORDER BY p.created_at, p.digest, t.id"
        )
        return codec.group_proofs(rows, d.proof_row)

    def iter_proof_candidates(
        self, index_key: str, after: str | None = None, limit: int | None = None
    ) -> Iterator[ProofRecord]:
        self._check()
        codec.check_page_limit(limit)
        d = self.dialect
        # Keyset pagination on the digest, the order of both index tables' primary keys: each
        # arm reads at most ``limit`` index entries after the cursor, so a page costs its own
        # size whatever came before it. An order the indexes do not have would make SQLite
        # read and sort every remaining candidate for every page: quadratic over a big anchor.
        cap = "" if limit is None else f" ORDER BY digest LIMIT {int(limit)}"
        cursor = after or ""  # every digest sorts after ""
        if index_key:
            page = (
                f"SELECT digest FROM (SELECT digest FROM {d.table('proof_subject_keys')}"
                f" WHERE index_key = {d.param} AND digest > {d.param}{cap}) AS k"
                f" UNION SELECT digest FROM (SELECT digest FROM {d.table('proofs_unindexed')}"
                f" WHERE digest > {d.param}{cap}) AS u"
            )
            params: tuple[Any, ...] = (index_key, cursor, cursor)
        else:
            page = f"SELECT digest FROM {d.table('proofs')} WHERE digest > {d.param}{cap}"
            params = (cursor,)
        rows = self._stream(
            "SELECT p.digest, p.envelope_json, p.created_at, t.token"
            f" FROM {d.table('proofs')} AS p"
            f" LEFT JOIN {d.table('proof_timestamps')} AS t ON t.digest = p.digest"
            f" WHERE p.digest IN (SELECT digest FROM ({page}) AS page{cap})"
            " ORDER BY p.digest, t.id",
            params,
        )
        return codec.group_proofs(rows, d.proof_row)


class CeremonyCommon(SqlCore):
    """The part of the ceremony repository whose SQL is the same on both dialects."""

    __slots__ = ()

    def ceremony_policy_versions(self) -> list[PolicyVersion]:
        self._check()
        d = self.dialect
        rows = self._all(
            "SELECT version, policy, recorded_at, recorded_by, ceremony_id"
            f" FROM {d.table('ceremony_policy')} ORDER BY version"
        )
        return [
            _policy_version(r[0], r[1].encode("utf-8"), d.time_out(r[2]), r[3], r[4]) for r in rows
        ]


def _policy_version(*fields: Any) -> PolicyVersion:
    # The ceremony model is imported when a policy is read, never by a verification.
    from stellakeys.ceremony.policy import PolicyVersion

    return PolicyVersion(*fields)


class SqlStore:
    """What the SQL stores share: closing once, and never in a forked child (the parent's
    connections are not the child's to close: docs/decisions/0011)."""

    _closed: bool
    _pid: int
    _schema: int

    def _close_connections(self) -> None:
        raise NotImplementedError  # pragma: no cover - every store defines it

    def schema_version(self) -> int:
        return self._schema

    def close(self) -> None:
        """Close this store's connections. Call it when no transaction is running."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return
        self._close_connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AuditReads(SqlCore):
    """The audit repository's reads, identical SQL on both dialects but for the fragments
    the :class:`Dialect` supplies."""

    __slots__ = ()

    def audit_events(self, query: AuditQuery | None = None) -> list[AuditEvent]:
        self._check()
        if query is None:
            return list(self.iter_audit())
        codec.check_query(query)
        out: list[AuditEvent] = []
        if query.limit == 0:
            return out
        d = self.dialect
        where: list[str] = []
        params: list[Any] = []
        exact = True
        if query.event_type is not None:
            pattern = query.event_type
            if "[" in pattern:
                # Character classes differ between fnmatch, GLOB ([!x] vs [^x]) and LIKE (none
                # at all): narrow by the literal prefix in SQL and let AuditQuery.matches decide.
                exact = False
                pattern = pattern.split("[", 1)[0] + "*"
            # GLOB, and LIKE on PostgreSQL, are case-sensitive like fnmatch.fnmatchcase.
            where.append(f"event_type {d.glob_op} {d.param}")
            params.append(d.glob(pattern))
        filters: tuple[tuple[str, str, Any, Callable[[Any], Any]], ...] = (
            ("timestamp", ">=", query.since, d.time),
            ("timestamp", "<=", query.until, d.time),
            ("key_id", "=", query.key_id, _same),
            ("anchor_id", "=", query.anchor_id, d.uuid),
            ("ceremony_id", "=", query.ceremony_id, _same),
        )
        for column, op, value, encode in filters:
            if value is not None:
                where.append(f"{column} {op} {d.param}")
                params.append(encode(value))
        sql = f"SELECT {d.audit_select} FROM {d.table('key_audit_log')}"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        if exact and query.limit is not None:
            sql += f" LIMIT {d.param}"
            params.append(query.limit)
        rows = self._all(sql, params) if exact else self._stream(sql, params)
        for row in rows:
            event = d.audit_row(row)
            if exact or query.matches(event):
                out.append(event)
                if query.limit is not None and len(out) >= query.limit:
                    break
        return out

    def iter_audit(self) -> Iterator[AuditEvent]:
        self._check()
        d = self.dialect
        rows = self._stream(f"SELECT {d.audit_select} FROM {d.table('key_audit_log')} ORDER BY seq")
        return map(d.audit_row, rows)

    def iter_audit_rows(self) -> Iterator[AuditRow]:
        from stellakeys.audit import text_audit_rows

        self._check()
        d = self.dialect
        rows = self._stream(
            f"SELECT {codec.AUDIT_COLUMNS} FROM {d.table('key_audit_log')} ORDER BY seq"
        )
        return map(native_audit_row, rows) if d.native else text_audit_rows(rows)

    def audit_state_rows(self) -> AuditStateRows:
        self._check()
        d = self.dialect
        # The orders of list_keys / list_anchors (a later row for one id wins in the
        # comparison, as it did when it compared those lists).
        return codec.audit_state_rows(
            self._all(
                f"SELECT key_id, algorithm, fingerprint FROM {d.table('keys')}"
                " ORDER BY created_at, key_id"
            ),
            self._all(
                "SELECT id, purl_pattern, policy_version, allowed_predicate_types, active"
                f" FROM {d.table('trust_anchors')} ORDER BY created_at, id"
            ),
            self._all(
                "SELECT anchor_id, key_id, added_at, revoked_at, revoke_reason, expires_at,"
                f" fingerprint FROM {d.table('key_history')} ORDER BY anchor_id, added_at, key_id"
            ),
            native=d.native,
        )


def native_audit_row(row: Sequence[Any]) -> AuditRow:
    """A PostgreSQL audit row (UUIDs, timestamptz and jsonb decoded by the driver)."""
    details = row[8]
    return (
        row[0],
        str(row[1]),
        row[2],
        row[3],
        None if row[4] is None else str(row[4]),
        row[5],
        format_time(row[6]),
        row[7],
        "{}" if details is None else codec.dump_json(details),
        row[9],
        row[10],
    )

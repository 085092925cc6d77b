"""The PostgreSQL storage adapter: one shared state for several services and approvers.

Install with the ``postgres`` extra (psycopg 3 and psycopg_pool). Nothing else in stellakeys
imports this module, so ``import stellakeys`` never imports psycopg; :func:`open_store` loads
it for ``postgresql://`` URLs. The reasoning is in docs/decisions/0007-postgres.md; the short
version:

* Schema ``signer`` (the key rotation runbook's tables), created and upgraded only by
  :func:`migrate` (``stellaops db migrate``). Opening a store checks the schema version and
  refuses a missing or outdated schema with "run stellaops db migrate": a service should not
  change a shared schema as a side effect of starting.
* Write transactions run at READ COMMITTED and start by locking the one row of
  ``signer.store_state`` (``SELECT ... FOR UPDATE``). Writers therefore queue on that row, in
  every process and on every host, and each statement after the lock sees everything the
  previous writers committed: reading the audit head and appending its successor, or reading
  a ceremony's state and changing it, cannot interleave with another writer. (REPEATABLE READ
  would be wrong here: its snapshot would date from before the lock wait.)
* Read transactions are REPEATABLE READ, READ ONLY: one snapshot for all their queries; they
  never wait for writers and never fail with serialization errors.
* ``change_token()`` reads ``signer.store_state.change_counter``, which statement triggers
  bump once per transaction that writes any table, whoever the writer is. One indexed
  single-row SELECT on a dedicated connection (a prepared statement after five calls).
* Connections come from a psycopg_pool pool, in autocommit mode with explicit
  BEGIN/COMMIT. A pooled connection that died while idle (server restart,
  ``pg_terminate_backend``) is detected by the transaction's first statement and replaced
  transparently; one that dies mid-transaction fails that transaction (the server rolls it
  back) and is discarded.
"""

# S608: every statement is assembled from module constants (column lists); values are always
# bound parameters, never formatted into SQL.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import attrs
import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent, AuditQuery, AuditRecord, chain_event
from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState, Decision
from stellakeys.ceremony.policy import PolicyVersion
from stellakeys.errors import ConflictError, NotFoundError, StorageError
from stellakeys.intents import KeyIntent
from stellakeys.keys import KeyRecord
from stellakeys.storage import _codec as codec
from stellakeys.storage._migrations import Migration, check_not_newer, packaged_migrations
from stellakeys.storage.ports import FeedVersionRecord, ProofRecord

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = [
    "MIGRATION_LOCK_KEY",
    "MigrationResult",
    "PostgresStore",
    "PostgresTransaction",
    "load_postgres_migrations",
    "migrate",
    "migrate_url",
    "redact_url",
    "schema_version",
    "url_schema_version",
]

#: ``pg_advisory_xact_lock`` key of the migrator ("stlkmigr" in ASCII). Only migrators take
#: it; the data itself is guarded by the store_state row lock.
MIGRATION_LOCK_KEY: Final = 0x73746C6B6D696772

DEFAULT_LOCK_TIMEOUT: Final = 30.0
DEFAULT_POOL_TIMEOUT: Final = 30.0
_FETCH = 256

Conn = psycopg.Connection[tuple[Any, ...]]
Row = tuple[Any, ...]

# Connections and pools inherited through fork() belong to the parent. Closing them in the
# child would send libpq's Terminate message down the shared socket and end the parent's
# session, so they are parked here, referenced forever, never touched.
_INHERITED: list[object] = []


# --- adaptation -----------------------------------------------------------------------------


def _proof_from_pg_row(row: Sequence[Any], tokens: tuple[bytes, ...]) -> ProofRecord:
    # psycopg returns aware datetimes and bytes already: no conversion, unlike SQLite's rows.
    body = bytes(row[1])
    codec.check_proof_digest(row[0], body)
    return ProofRecord(row[0], body, row[2], tokens)


class _JsonbLoader(Loader):
    """jsonb -> Python. Most metadata is ``{}``; skipping the parser for it is measurable on
    the verification path (as in the SQLite codec). Each call returns a fresh dict, so a
    caller can never change another caller's (or the store's) value."""

    def load(self, data: Buffer) -> Any:
        if data == b"{}":
            return {}
        return json.loads(bytes(data))


_ADAPTERS = AdaptersMap(psycopg.adapters)
_ADAPTERS.register_loader("jsonb", _JsonbLoader)


# --- errors and URLs ------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _storage_error(exc: BaseException, doing: str) -> StorageError:
    """A one-line StorageError (no SQL, no parameters, no DETAIL with values)."""
    message = _one_line(exc)
    if isinstance(exc, pg_errors.LockNotAvailable):
        message += " (another writer held the write lock longer than the lock timeout)"
    elif isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        message += " (the stellakeys schema is missing or outdated: run stellaops db migrate)"
    elif isinstance(exc, psycopg.OperationalError):
        message += " (connection to PostgreSQL lost)"
    return StorageError(f"PostgreSQL {doing} failed: {message}")


def redact_url(url: str) -> str:
    """``postgresql://user@host:port/dbname`` without password or options, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or "")
    if host.startswith("/"):
        host = f"[{host}]"
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


def _check_aware(value: datetime) -> datetime:
    """Refuse naive datetimes, as the other adapters do: PostgreSQL would silently read one in
    the session time zone and move every validity window."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: add a zone")
    return value


def _opt_aware(value: datetime | None) -> datetime | None:
    return None if value is None else _check_aware(value)


def _opt_json_text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


# --- migrations -----------------------------------------------------------------------------


def load_postgres_migrations() -> tuple[Migration, ...]:
    """The packaged ``migrations/postgres/NNNN_name.sql`` files, in order."""
    return packaged_migrations("postgres")


@attrs.frozen
class MigrationResult:
    previous: int
    current: int
    applied: tuple[str, ...]


def schema_version(conn: Conn) -> int | None:
    """The highest applied migration, or None when there is no stellakeys schema at all."""
    row = conn.execute("SELECT to_regclass('signer.schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM signer.schema_migrations").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def migrate(conn: Conn, migrations: Sequence[Migration] | None = None) -> MigrationResult:
    """Apply the missing migrations, all in one transaction, and report what was done.

    Safe to run again (a no-op) and from several processes or hosts at once: the migrator
    takes ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)`` before it even creates the schema, so a
    second migrator waits, then finds the work done. Once the schema exists it also locks
    ``signer.store_state`` in EXCLUSIVE mode, so running writers finish first and new ones wait
    for the new schema (rather than deadlocking against the DDL). PostgreSQL DDL is
    transactional: a failing migration leaves nothing of itself behind.

    ``conn`` must be in autocommit mode, outside a transaction."""
    migrations = load_postgres_migrations() if migrations is None else tuple(migrations)
    latest = migrations[-1].version if migrations else 0
    doing = "schema check"
    try:
        # Lock-free fast path: an up-to-date database needs no privileges beyond reading.
        current = schema_version(conn)
        if current is not None and current >= latest:
            check_not_newer(current, latest, "PostgreSQL")
            return MigrationResult(current, current, ())
        doing = "schema migration"
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE SCHEMA IF NOT EXISTS signer;"
                " CREATE TABLE IF NOT EXISTS signer.schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT to_regclass('signer.store_state') IS NOT NULL").fetchone()
            if row is not None and row[0]:
                conn.execute("LOCK TABLE signer.store_state IN EXCLUSIVE MODE")
            applied = {
                int(r[0]) for r in conn.execute("SELECT version FROM signer.schema_migrations")
            }
            previous = max(applied, default=0)
            check_not_newer(previous, latest, "PostgreSQL")
            done: list[str] = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                doing = f"schema migration {migration.version:04d}_{migration.name}"
                # No parameters: psycopg sends the file as one simple query, so it may hold
                # many statements and dollar-quoted function bodies (and % is not special).
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    "INSERT INTO signer.schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                done.append(f"{migration.version:04d}_{migration.name}")
    except psycopg.Error as exc:
        raise _storage_error(exc, doing) from exc
    return MigrationResult(previous, latest, tuple(done))


_migrate = migrate  # PostgresStore's ``migrate`` flag shadows the name inside it


def _direct_connection(url: str) -> Conn:
    try:
        return psycopg.Connection.connect(
            url, autocommit=True, context=_ADAPTERS, fallback_application_name="stellakeys"
        )
    except psycopg.Error as exc:
        raise StorageError(
            f"cannot connect to PostgreSQL at {redact_url(url)}: {_one_line(exc)}"
        ) from None


def migrate_url(url: str) -> MigrationResult:
    """``stellaops db migrate`` for a PostgreSQL URL: connect, :func:`migrate`, disconnect."""
    with _direct_connection(url) as conn:
        return migrate(conn)


def url_schema_version(url: str) -> tuple[int | None, int]:
    """(the database's schema version or None when it has none, the latest this code knows)."""
    latest = load_postgres_migrations()[-1].version
    with _direct_connection(url) as conn:
        try:
            return schema_version(conn), latest
        except psycopg.Error as exc:
            raise _storage_error(exc, "schema check") from exc


# --- SQL ------------------------------------------------------------------------------------

# Column lists in the positional order of the domain classes' fields, so a row becomes an
# object with one call and no per-field work (the lookup path builds thousands of these).
_INTENT_COLS = (
    "key_id, operation, profile, algorithm, key_store, created_at, params, public_key,"
    " fingerprint, key_store_uri"
)


def _intent(row: Row) -> KeyIntent:
    return KeyIntent(
        key_id=row[0],
        operation=row[1],
        profile=row[2],
        algorithm=row[3],
        key_store=row[4],
        created_at=row[5],
        params=row[6] or {},
        public_key_pem=row[7],
        fingerprint=row[8],
        key_store_uri=row[9],
    )


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
_APPROVAL_COLS = (
    "id, ceremony_id, approver, decision, reason, approved_at, signature_valid,"
    " signature_key_id, signature_algorithm, signature_fingerprint, envelope"
)
_CEREMONIES_JOIN = (
    f"SELECT {_CEREMONY_SELECT}, a.id, a.ceremony_id, a.approver, a.decision, a.reason,"
    " a.approved_at, a.signature_valid, a.signature_key_id, a.signature_algorithm,"
    " a.signature_fingerprint, a.envelope FROM signer.ceremonies AS c"
    " LEFT JOIN signer.ceremony_approvals AS a ON a.ceremony_id = c.id"
)
_CEREMONIES_ORDER = " ORDER BY c.created_at, c.id, a.approved_at, a.id"

_BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
# One round trip: BEGIN and the write lock, sent as one simple query.
_BEGIN_WRITE = (
    b"BEGIN ISOLATION LEVEL READ COMMITTED;"
    b" SELECT change_counter FROM signer.store_state WHERE id = 1 FOR UPDATE"
)
_COUNTER_SQL = "SELECT change_counter FROM signer.store_state WHERE id = 1"


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
            rows, 16, 16, lambda c, approvals: _ceremony(c, list(map(_approval, approvals)))
        )
    )


def _ceremony(row: Sequence[Any], approvals: list[Approval]) -> Ceremony:
    return Ceremony(
        ceremony_id=row[0],
        type=row[1],
        subject=row[2],
        state=CeremonyState(row[3]),
        threshold=row[4],
        required_approvers=row[5],
        payload_json=row[6].encode("utf-8"),
        created_at=row[7],
        expires_at=row[8],
        initiator=row[9],
        allowed_approvers=tuple(row[10]),
        approvals=tuple(approvals),
        executed_at=row[11],
        result_json=row[12].encode("utf-8") if row[12] is not None else None,
        cancelled_at=row[13],
        cancel_reason=row[14],
        notifications_sent=tuple(row[15]),
    )


def _approval(row: Sequence[Any]) -> Approval:
    return Approval(
        approval_id=row[0],
        ceremony_id=row[1],
        approver=row[2],
        decision=Decision(row[3]),
        reason=row[4],
        approved_at=row[5],
        signature_valid=row[6],
        signature_key_id=row[7],
        signature_algorithm=row[8],
        signature_fingerprint=row[9],
        envelope_json=row[10],
    )


def _like_pattern(pattern: str) -> str:
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


# --- transactions ---------------------------------------------------------------------------


class PostgresTransaction:
    """A transaction on a :class:`PostgresStore`; use it only inside its ``with`` block."""

    __slots__ = ("_conn", "_cursors", "_head", "_names", "_writable", "open")

    def __init__(self, conn: Conn, *, writable: bool) -> None:
        self._conn = conn
        self._writable = writable
        # Server-side cursors of streaming reads, closed when the transaction ends.
        self._cursors: list[psycopg.ServerCursor[Row]] = []
        self._names = 0
        # The audit head once read (or appended) in this write transaction: the row lock keeps
        # it current, so further appends skip the query.
        self._head: AuditEvent | None = None
        self.open = True

    # --- plumbing -------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.open:
            raise StorageError("the transaction is finished; open a new one")

    def _check_write(self) -> None:
        self._check()
        if not self._writable:
            raise StorageError("write inside a read-only transaction")

    def _exec(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> psycopg.Cursor[Row]:
        try:
            return self._conn.execute(sql, params)
        except psycopg.Error as exc:
            raise _storage_error(exc, "statement") from exc

    def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise _storage_error(exc, "query") from exc

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            return self._conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            raise _storage_error(exc, "query") from exc

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        """Rows fetched _FETCH at a time through a server-side cursor, so a long audit log is
        never held in memory; other queries may run while it is open."""
        self._names += 1
        cursor = self._conn.cursor(name=f"stellakeys_{self._names}")
        cursor.itersize = _FETCH
        try:
            cursor.execute(sql, params)
        except psycopg.Error as exc:
            raise _storage_error(exc, "query") from exc
        self._cursors.append(cursor)
        return self._rows(cursor)

    def _rows(self, cursor: psycopg.ServerCursor[Row]) -> Iterator[Row]:
        while True:
            if not self.open:
                raise StorageError("the transaction ended while its rows were being read")
            try:
                rows = cursor.fetchmany(_FETCH)
            except psycopg.Error as exc:
                raise _storage_error(exc, "query") from exc
            if not rows:
                return
            yield from rows

    def finish(self) -> None:
        """Called after COMMIT/ROLLBACK: closing a cursor of an ended transaction sends
        nothing."""
        self.open = False
        for cursor in self._cursors:
            with contextlib.suppress(psycopg.Error):  # the connection is gone; so is the cursor
                cursor.close()
        self._cursors.clear()

    # --- keys -----------------------------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord | None:
        self._check()
        row = self._one(f"SELECT {_KEY_COLS} FROM signer.keys WHERE key_id = %s", (key_id,))
        return None if row is None else KeyRecord(*row)

    def insert_key(self, record: KeyRecord) -> None:
        self._check_write()
        params = (
            record.key_id,
            record.algorithm,
            record.public_key_pem,
            record.fingerprint,
            _check_aware(record.created_at),
            record.profile,
            record.key_store_uri,
            str(record.origin),
            codec.dump_json(dict(record.metadata)),
        )
        # ON CONFLICT DO NOTHING rather than catching the unique violation: an error would
        # abort the whole PostgreSQL transaction, while the port (like SQLite) lets the
        # caller catch ConflictError and carry on.
        row = self._one(
            f"INSERT INTO signer.keys ({_KEY_COLS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            params,
        )
        if row is None:
            raise ConflictError(f"key {record.key_id!r} already exists")

    def list_keys(self) -> list[KeyRecord]:
        self._check()
        rows = self._all(f"SELECT {_KEY_COLS} FROM signer.keys ORDER BY created_at, key_id")
        return [KeyRecord(*r) for r in rows]

    # --- key lifecycle intents -----------------------------------------------------------

    def put_intent(self, intent: KeyIntent) -> None:
        self._check_write()
        self._exec(
            f"INSERT INTO signer.key_intents ({_INTENT_COLS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
            " ON CONFLICT (key_id) DO UPDATE SET operation = EXCLUDED.operation,"
            " profile = EXCLUDED.profile, algorithm = EXCLUDED.algorithm,"
            " key_store = EXCLUDED.key_store, created_at = EXCLUDED.created_at,"
            " params = EXCLUDED.params, public_key = EXCLUDED.public_key,"
            " fingerprint = EXCLUDED.fingerprint, key_store_uri = EXCLUDED.key_store_uri",
            (
                intent.key_id,
                intent.operation,
                intent.profile,
                intent.algorithm,
                intent.key_store,
                _check_aware(intent.created_at),
                codec.dump_json(dict(intent.params)),
                intent.public_key_pem,
                intent.fingerprint,
                intent.key_store_uri,
            ),
        )

    def get_intent(self, key_id: str) -> KeyIntent | None:
        self._check()
        row = self._one(
            f"SELECT {_INTENT_COLS} FROM signer.key_intents WHERE key_id = %s", (key_id,)
        )
        return None if row is None else _intent(row)

    def list_intents(self) -> list[KeyIntent]:
        self._check()
        rows = self._all(
            f"SELECT {_INTENT_COLS} FROM signer.key_intents ORDER BY created_at, key_id"
        )
        return [_intent(r) for r in rows]

    def delete_intent(self, key_id: str) -> None:
        self._check_write()
        self._exec("DELETE FROM signer.key_intents WHERE key_id = %s", (key_id,))

    # --- trust anchors and key history ----------------------------------------------------

    def get_anchor(self, anchor_id: uuid.UUID) -> TrustAnchor | None:
        self._check()
        anchors = _group_anchors(self._all(_ANCHOR_BY_ID, (anchor_id,)))
        return anchors[0] if anchors else None

    def insert_anchor(self, anchor: TrustAnchor, index_key: str) -> None:
        self._check_write()
        codec.check_history_belongs(anchor)
        for entry in anchor.key_history:  # refuse naive times before writing anything
            self._history_params(entry)
        row = self._one(
            "INSERT INTO signer.trust_anchors (id, purl_pattern, allowed_predicate_types,"
            " policy_version, created_at, active, index_key)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (
                anchor.anchor_id,
                anchor.purl_pattern,
                list(anchor.allowed_predicate_types),
                anchor.policy_version,
                _check_aware(anchor.created_at),
                anchor.active,
                index_key,
            ),
        )
        if row is None:
            raise ConflictError(f"trust anchor {anchor.anchor_id} already exists")
        for entry in anchor.key_history:
            self._insert_history(entry)

    def set_anchor_active(self, anchor_id: uuid.UUID, active: bool) -> None:
        self._check_write()
        cursor = self._exec(
            "UPDATE signer.trust_anchors SET active = %s WHERE id = %s", (active, anchor_id)
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"no trust anchor {anchor_id}")

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        self._check()
        where = " WHERE a.active" if active_only else ""
        return _group_anchors(self._all(f"{_ANCHORS_JOIN}{where}{_ANCHORS_ORDER}"))

    def anchors_by_index_keys(self, index_keys: Sequence[str]) -> list[TrustAnchor]:
        self._check()
        if not index_keys:
            return []
        keys = list(dict.fromkeys(index_keys))
        return _group_anchors(self._all(_ANCHORS_BY_INDEX, (keys,)))

    def anchors_below_index_key(self, index_key: str) -> list[TrustAnchor]:
        self._check()
        return _group_anchors(self._all(_ANCHORS_BELOW_INDEX, (index_key + "/", index_key + "0")))

    def keys_valid_at(self, anchor_id: uuid.UUID, at: datetime) -> list[KeyHistoryEntry]:
        """The entries of one anchor valid at ``at`` (``added_at <= at < min(revoked_at,
        expires_at)``, as :meth:`KeyHistoryEntry.valid_at`), ordered by added_at then key_id.

        Not part of the port: a PostgreSQL extra for forensic tools and reports that ask the
        database directly. It is the runbook's temporal lookup, a range scan of
        idx_key_history_validity (anchor_id, added_at, revoked_at)."""
        self._check()
        rows = self._all(
            f"SELECT {_HISTORY_SELECT} FROM signer.key_history AS h"
            " WHERE h.anchor_id = %(a)s AND h.added_at <= %(t)s"
            " AND (h.revoked_at IS NULL OR h.revoked_at > %(t)s)"
            " AND (h.expires_at IS NULL OR h.expires_at > %(t)s)"
            " ORDER BY h.added_at, h.key_id",
            {"a": anchor_id, "t": _check_aware(at)},
        )
        return [KeyHistoryEntry(*r) for r in rows]

    @staticmethod
    def _history_params(entry: KeyHistoryEntry) -> Row:
        codec.check_reason_known(entry.revoke_reason)
        return (
            entry.anchor_id,
            entry.key_id,
            entry.algorithm,
            entry.public_key_pem,
            entry.fingerprint,
            _check_aware(entry.added_at),
            _opt_aware(entry.revoked_at),
            entry.revoke_reason,
            _opt_aware(entry.expires_at),
            codec.dump_json(dict(entry.metadata)),
            entry.entry_id,
        )

    def _insert_history(self, entry: KeyHistoryEntry) -> None:
        row = self._one(
            f"INSERT INTO signer.key_history ({_HISTORY_COLS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            self._history_params(entry),
        )
        if row is not None:
            return
        # Which unique constraint was it? (Rare path; the row lock keeps the answer stable.)
        if self._one("SELECT 1 FROM signer.key_history WHERE id = %s", (entry.entry_id,)):
            raise ConflictError(f"key history entry {entry.entry_id} already exists")
        raise ConflictError(f"key {entry.key_id!r} is already in trust anchor {entry.anchor_id}")

    def insert_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        params = self._history_params(entry)
        # Checked first because a foreign key violation would abort the transaction.
        # Anchors are never deleted and writers hold the store lock, so it cannot go stale.
        if self._one("SELECT 1 FROM signer.trust_anchors WHERE id = %s", (params[0],)) is None:
            raise NotFoundError(f"no trust anchor {entry.anchor_id}")
        self._insert_history(entry)

    def update_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        # The triggers of migration 0003 refuse the same; checked first for a ConflictError
        # (a trigger's exception would abort the whole transaction).
        old = self._one(
            "SELECT revoked_at, revoke_reason, expires_at FROM signer.key_history"
            " WHERE anchor_id = %s AND key_id = %s",
            (entry.anchor_id, entry.key_id),
        )
        if old is None:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")
        codec.check_history_update(
            entry.key_id,
            (old[0], old[1], old[2]),
            (_opt_aware(entry.revoked_at), entry.revoke_reason, _opt_aware(entry.expires_at)),
        )
        cursor = self._exec(
            "UPDATE signer.key_history SET revoked_at = %s, revoke_reason = %s,"
            " expires_at = %s, metadata = %s::jsonb WHERE anchor_id = %s AND key_id = %s",
            (
                _opt_aware(entry.revoked_at),
                entry.revoke_reason,
                _opt_aware(entry.expires_at),
                codec.dump_json(dict(entry.metadata)),
                entry.anchor_id,
                entry.key_id,
            ),
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")

    def history_of_key(self, key_id: str) -> list[KeyHistoryEntry]:
        self._check()
        rows = self._all(
            f"SELECT {_HISTORY_SELECT} FROM signer.key_history AS h"
            " WHERE h.key_id = %s ORDER BY h.added_at, h.anchor_id",
            (key_id,),
        )
        return [KeyHistoryEntry(*r) for r in rows]

    def history_by_fingerprints(self, fingerprints: Collection[str]) -> list[KeyHistoryEntry]:
        self._check()
        wanted = list(dict.fromkeys(fingerprints))
        if not wanted:
            return []
        rows = self._all(
            f"SELECT {_HISTORY_SELECT} FROM signer.key_history AS h"
            " WHERE h.fingerprint = ANY(%s) ORDER BY h.added_at, h.anchor_id, h.key_id",
            (wanted,),
        )
        return [KeyHistoryEntry(*r) for r in rows]

    # --- proofs -----------------------------------------------------------------------------

    def put_proof(self, proof: ProofRecord) -> None:
        self._check_write()
        codec.check_proof_digest(proof.digest, bytes(proof.envelope_json))
        row = self._one(
            "INSERT INTO signer.proofs (digest, envelope_json, created_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (digest) DO NOTHING RETURNING 1",
            (proof.digest, bytes(proof.envelope_json), _check_aware(proof.created_at)),
        )
        if row is not None:  # a new proof: its tokens come with it
            for token in proof.timestamp_tokens:
                self._add_token(proof.digest, token)

    def _add_token(self, digest: str, token: bytes) -> bool:
        """Insert unless present; False when the proof does not exist."""
        cursor = self._exec(
            "INSERT INTO signer.proof_timestamps (digest, token)"
            " SELECT p.digest, %s::bytea FROM signer.proofs AS p WHERE p.digest = %s"
            " ON CONFLICT (digest, token_sha256) DO NOTHING",
            (bytes(token), digest),
        )
        if cursor.rowcount == 1:
            return True
        return self._one("SELECT 1 FROM signer.proofs WHERE digest = %s", (digest,)) is not None

    def get_proof(self, digest: str) -> ProofRecord | None:
        self._check()
        rows = self._all(
            "SELECT p.digest, p.envelope_json, p.created_at, t.token FROM signer.proofs AS p"
            " LEFT JOIN signer.proof_timestamps AS t ON t.digest = p.digest"
            " WHERE p.digest = %s ORDER BY t.id",
            (digest,),
        )
        proofs = list(codec.group_proofs(rows, _proof_from_pg_row))
        return proofs[0] if proofs else None

    def add_proof_timestamp(self, digest: str, token: bytes) -> None:
        self._check_write()
        if not self._add_token(digest, token):
            raise NotFoundError(f"no proof {digest}")

    def iter_proofs(self) -> Iterator[ProofRecord]:
        self._check()
        rows = self._stream(
            "SELECT p.digest, p.envelope_json, p.created_at, t.token FROM signer.proofs AS p"
            " LEFT JOIN signer.proof_timestamps AS t ON t.digest = p.digest"
            " ORDER BY p.created_at, p.digest, t.id"
        )
        return codec.group_proofs(rows, _proof_from_pg_row)

    # --- feed versions ----------------------------------------------------------------------

    def feed_versions(self) -> list[FeedVersionRecord]:
        self._check()
        rows = self._all(
            "SELECT version, digest, published_at FROM signer.feed_versions ORDER BY version"
        )
        return [FeedVersionRecord(r[0], r[1], r[2]) for r in rows]

    def insert_feed_version(self, record: FeedVersionRecord) -> None:
        self._check_write()
        published = _check_aware(record.published_at)
        # Checked first, under the store_state lock held since BEGIN (so the answers cannot go
        # stale), because a violated constraint would abort the transaction; the primary key,
        # the UNIQUE digest and the no-gap trigger enforce the same for any other writer.
        row = self._one("SELECT coalesce(max(version), 0) FROM signer.feed_versions")
        highest = int(row[0]) if row else 0
        if record.version != highest + 1:
            raise ConflictError(codec.feed_version_conflict(record.version, highest))
        if self._one("SELECT 1 FROM signer.feed_versions WHERE digest = %s", (record.digest,)):
            raise ConflictError(f"proof {record.digest} already holds a feed version")
        if not self._one("SELECT 1 FROM signer.proofs WHERE digest = %s", (record.digest,)):
            raise NotFoundError(f"no proof {record.digest}")
        try:
            self._conn.execute(
                "INSERT INTO signer.feed_versions (version, digest, published_at)"
                " VALUES (%s, %s, %s)",
                (record.version, record.digest, published),
            )
        except pg_errors.UniqueViolation:
            raise ConflictError(
                codec.feed_version_conflict(record.version, record.version)
            ) from None
        except psycopg.Error as exc:
            raise _storage_error(exc, "statement") from exc

    # --- ceremonies -------------------------------------------------------------------------

    def get_ceremony(self, ceremony_id: str) -> Ceremony | None:
        self._check()
        rows = self._all(f"{_CEREMONIES_JOIN} WHERE c.id = %s{_CEREMONIES_ORDER}", (ceremony_id,))
        found = _group_ceremonies(rows)
        return found[0] if found else None

    def insert_ceremony(self, ceremony: Ceremony) -> None:
        self._check_write()
        if ceremony.approvals:
            raise ValueError("insert a ceremony without approvals; add them with insert_approval")
        row = self._one(
            "INSERT INTO signer.ceremonies (id, type, subject, state, threshold,"
            " required_approvers, payload, created_at, expires_at, initiator, allowed_approvers,"
            " executed_at, result, cancelled_at, cancel_reason, notifications_sent)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::json, %s, %s, %s, %s, %s, %s::json, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (
                ceremony.ceremony_id,
                ceremony.type,
                ceremony.subject,
                ceremony.state.value,
                ceremony.threshold,
                ceremony.required_approvers,
                ceremony.payload_json.decode("utf-8"),
                _check_aware(ceremony.created_at),
                _check_aware(ceremony.expires_at),
                ceremony.initiator,
                list(ceremony.allowed_approvers),
                _opt_aware(ceremony.executed_at),
                _opt_json_text(ceremony.result_json),
                _opt_aware(ceremony.cancelled_at),
                ceremony.cancel_reason,
                list(ceremony.notifications_sent),
            ),
        )
        if row is None:
            raise ConflictError(f"ceremony {ceremony.ceremony_id} already exists")

    def update_ceremony(self, ceremony: Ceremony) -> None:
        self._check_write()
        # Read under the store lock (held since BEGIN), so the state cannot move between this
        # check and the update: this is what makes "execute exactly once" hold across
        # processes. FOR UPDATE also keeps a writer that bypassed the lock out.
        current = self._one(
            "SELECT state FROM signer.ceremonies WHERE id = %s FOR UPDATE",
            (ceremony.ceremony_id,),
        )
        if current is None:
            raise NotFoundError(f"no ceremony {ceremony.ceremony_id}")
        if CeremonyState(current[0]).terminal:
            # The schema's trigger would refuse it too, but aborting the transaction.
            raise ConflictError(
                f"ceremony {ceremony.ceremony_id} is {current[0]}: a terminal ceremony never"
                " changes"
            )
        self._exec(
            "UPDATE signer.ceremonies SET state = %s, executed_at = %s, result = %s::json,"
            " cancelled_at = %s, cancel_reason = %s, notifications_sent = %s WHERE id = %s",
            (
                ceremony.state.value,
                _opt_aware(ceremony.executed_at),
                _opt_json_text(ceremony.result_json),
                _opt_aware(ceremony.cancelled_at),
                ceremony.cancel_reason,
                list(ceremony.notifications_sent),
                ceremony.ceremony_id,
            ),
        )

    def insert_approval(self, approval: Approval) -> None:
        self._check_write()
        # Checked first: a foreign key violation would abort the transaction. Ceremonies are
        # never deleted and writers hold the store lock, so the answer cannot go stale.
        if self._one("SELECT 1 FROM signer.ceremonies WHERE id = %s", (approval.ceremony_id,)):
            row = self._one(
                f"INSERT INTO signer.ceremony_approvals ({_APPROVAL_COLS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (
                    approval.approval_id,
                    approval.ceremony_id,
                    approval.approver,
                    approval.decision.value,
                    approval.reason,
                    _check_aware(approval.approved_at),
                    approval.signature_valid,
                    approval.signature_key_id,
                    approval.signature_algorithm,
                    approval.signature_fingerprint,
                    None if approval.envelope_json is None else bytes(approval.envelope_json),
                ),
            )
        else:
            raise NotFoundError(f"no ceremony {approval.ceremony_id}")
        if row is not None:
            return
        if self._one(
            "SELECT 1 FROM signer.ceremony_approvals WHERE ceremony_id = %s AND approver = %s",
            (approval.ceremony_id, approval.approver),
        ):
            raise ConflictError(
                f"{approval.approver} has already decided on ceremony {approval.ceremony_id}"
            )
        raise ConflictError(f"approval {approval.approval_id} already exists")

    def list_ceremonies(self, states: Collection[CeremonyState] | None = None) -> list[Ceremony]:
        self._check()
        if states is None:
            rows = self._all(_CEREMONIES_JOIN + _CEREMONIES_ORDER)
        else:
            values = sorted({s.value for s in states})
            if not values:
                return []
            rows = self._all(
                f"{_CEREMONIES_JOIN} WHERE c.state = ANY(%s){_CEREMONIES_ORDER}", (values,)
            )
        return _group_ceremonies(rows)

    # --- dual-control policy ---------------------------------------------------------------

    def ceremony_policy_versions(self) -> list[PolicyVersion]:
        self._check()
        rows = self._all(
            "SELECT version, policy, recorded_at, recorded_by, ceremony_id"
            " FROM signer.ceremony_policy ORDER BY version"
        )
        return [
            PolicyVersion(r[0], r[1].encode("utf-8"), r[2].astimezone(UTC), r[3], r[4])
            for r in rows
        ]

    def insert_ceremony_policy(self, version: PolicyVersion) -> None:
        self._check_write()
        if version.ceremony_id is not None and not self._one(
            "SELECT 1 FROM signer.ceremonies WHERE id = %s", (version.ceremony_id,)
        ):
            raise NotFoundError(f"no ceremony {version.ceremony_id}")
        row = self._one(
            "INSERT INTO signer.ceremony_policy"
            " (version, policy, recorded_at, recorded_by, ceremony_id)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (
                version.version,
                version.policy_json.decode("utf-8"),
                _check_aware(version.recorded_at),
                version.recorded_by,
                version.ceremony_id,
            ),
        )
        if row is None:
            raise ConflictError(f"ceremony policy version {version.version} already exists")

    # --- audit ------------------------------------------------------------------------------

    def append_audit(self, record: AuditRecord) -> AuditEvent:
        self._check_write()
        head = self._head
        if head is None:
            # The store_state row lock is held since BEGIN, so nobody can append between this
            # read and our insert: the chain stays one line.
            row = self._one(
                f"SELECT {_AUDIT_SELECT} FROM signer.key_audit_log ORDER BY seq DESC LIMIT 1"
            )
            head = None if row is None else AuditEvent(*row)
        event = chain_event(head, record)
        details = codec.dump_json(dict(event.details))
        returned = self._one(
            f"INSERT INTO signer.key_audit_log ({_AUDIT_COLS}, details, prev_hash, hash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING details",
            (
                event.seq,
                event.event_id,
                event.event_type,
                event.actor,
                _check_aware(event.timestamp),
                event.key_id,
                event.anchor_id,
                event.ceremony_id,
                details,
                event.prev_hash,
                event.hash,
            ),
        )
        if returned is None:
            if self._one(
                "SELECT 1 FROM signer.key_audit_log WHERE event_id = %s", (event.event_id,)
            ):
                raise ConflictError(f"audit event {record.event_id} already exists")
            raise StorageError(
                f"audit event seq {event.seq} was taken by a writer that bypassed the store"
                " lock; retry"
            )
        # The hash covers the details as the caller gave them; jsonb normalises numbers
        # (1e16 comes back as 10000000000000000), which would break the chain on read.
        if codec.dump_json(returned[0]) != details:
            raise StorageError(
                "audit details do not survive a round trip through jsonb (a float such as"
                " 1e16?); store numbers as integers or strings"
            )
        self._head = event
        return event

    def audit_events(self, query: AuditQuery | None = None) -> list[AuditEvent]:
        self._check()
        if query is None:
            return list(self.iter_audit())
        codec.check_query(query)
        out: list[AuditEvent] = []
        if query.limit == 0:
            return out
        where: list[str] = []
        params: list[Any] = []
        exact = True
        if query.event_type is not None:
            pattern = query.event_type
            if "[" in pattern:
                # Character classes ([!x]) have no LIKE equivalent: narrow by the literal
                # prefix in SQL and let AuditQuery.matches decide.
                exact = False
                pattern = pattern.split("[", 1)[0] + "*"
            where.append("event_type LIKE %s")
            params.append(_like_pattern(pattern))
        if query.since is not None:
            where.append("timestamp >= %s")
            params.append(query.since)
        if query.until is not None:
            where.append("timestamp <= %s")
            params.append(query.until)
        if query.key_id is not None:
            where.append("key_id = %s")
            params.append(query.key_id)
        if query.anchor_id is not None:
            where.append("anchor_id = %s")
            params.append(query.anchor_id)
        if query.ceremony_id is not None:
            where.append("ceremony_id = %s")
            params.append(query.ceremony_id)
        sql = f"SELECT {_AUDIT_SELECT} FROM signer.key_audit_log"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        if exact and query.limit is not None:
            sql += " LIMIT %s"
            params.append(query.limit)
        rows: Iterable[Row] = self._all(sql, params) if exact else self._stream(sql, params)
        for row in rows:
            event = AuditEvent(*row)
            if exact or query.matches(event):
                out.append(event)
                if query.limit is not None and len(out) >= query.limit:
                    break
        return out

    def iter_audit(self) -> Iterator[AuditEvent]:
        self._check()
        rows = self._stream(f"SELECT {_AUDIT_SELECT} FROM signer.key_audit_log ORDER BY seq")
        return (AuditEvent(*row) for row in rows)


class _TxContext:
    """``with store.transaction()`` / ``with store.read()``: a class rather than a generator
    context manager because reads are on the verification hot path."""

    __slots__ = ("_conn", "_store", "_tx", "_write")

    def __init__(self, store: PostgresStore, write: bool) -> None:
        self._store = store
        self._write = write

    def __enter__(self) -> PostgresTransaction:
        store = self._store
        store._enter_thread()
        try:
            self._conn = store._begin(self._write)
        except BaseException:
            store._local.busy = False
            raise
        self._tx = PostgresTransaction(self._conn, writable=self._write)
        return self._tx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._store._end(self._conn, self._tx, commit=exc_type is None)
        finally:
            self._store._local.busy = False


class PostgresStore:
    """A :class:`~stellakeys.storage.ports.Store` on PostgreSQL:
    ``PostgresStore.connect("postgresql://user@host/db")``.

    Usable from many threads (a connection pool; each transaction holds one connection) and
    many processes and hosts at once. The schema must have been created with
    ``stellaops db migrate`` (or ``connect(url, migrate=True)``).
    """

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = False,
        min_size: int = 1,
        max_size: int = 10,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        self._url = url
        self.display_url = redact_url(url)
        self.min_size, self.max_size = min_size, max_size
        self.lock_timeout, self.pool_timeout = lock_timeout, pool_timeout
        # Session settings for every connection: times come back as aware UTC (psycopg maps
        # the session TimeZone to the datetime's tzinfo); writers wait lock_timeout at most;
        # statements psycopg has prepared (run five times or more) keep their generic plan.
        # Without that, PostgreSQL re-plans the anchor lookup on every call (its generic plan
        # for "= ANY($1)" looks costlier than the custom ones), and planning took twice as
        # long as executing. Every repeated statement here is an index lookup whose best plan
        # does not depend on the values.
        self._session_sql = (
            "SET TimeZone TO 'UTC'; SET plan_cache_mode TO force_generic_plan;"
            f" SET lock_timeout TO {int(lock_timeout * 1000)}"
        ).encode()
        self._closed = False
        self._reset_process_state()
        conn = self._token_connection()  # a direct connection: its errors say what is wrong
        try:
            if migrate:
                self._schema = _migrate(conn).current
            else:
                self._schema = _check_schema(conn, self.display_url)
        except BaseException:
            self.close()
            raise

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        migrate: bool = False,
        min_size: int = 1,
        max_size: int = 10,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> PostgresStore:
        """Open a store on ``url`` (``postgresql://`` or ``postgres://``, any libpq URL).

        ``migrate=False`` (the default) refuses a database whose schema is missing or older
        than this stellakeys, asking for ``stellaops db migrate``; ``migrate=True`` applies
        the missing migrations first (tests, single-tenant tools). ``max_size`` bounds the
        pool; a transaction waits up to ``pool_timeout`` seconds for a connection and a writer
        up to ``lock_timeout`` seconds for the write lock."""
        return cls(
            url,
            migrate=migrate,
            min_size=min_size,
            max_size=max_size,
            lock_timeout=lock_timeout,
            pool_timeout=pool_timeout,
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self.display_url!r})"

    # --- connections ----------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._pool: ConnectionPool[Conn] | None = None
        self._pool_lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._token_conn: Conn | None = None

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's connections and pool threads are not ours.
            _INHERITED.append((self._pool, self._token_conn))
            self._reset_process_state()

    def _configure(self, conn: Conn) -> None:
        conn.execute(self._session_sql)

    def _connect(self) -> Conn:
        conn = _direct_connection(self._url)
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise _storage_error(exc, "session setup") from exc
        return conn

    def _token_connection(self) -> Conn:
        if self._token_conn is None or self._token_conn.closed:
            self._token_conn = self._connect()
        return self._token_conn

    def _get_pool(self) -> ConnectionPool[Conn]:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self._url,
                        connection_class=psycopg.Connection,
                        kwargs={
                            "autocommit": True,
                            "context": _ADAPTERS,
                            "fallback_application_name": "stellakeys",
                        },
                        min_size=self.min_size,
                        max_size=self.max_size,
                        timeout=self.pool_timeout,
                        configure=self._configure,
                        name="stellakeys",
                        open=True,
                    )
                pool = self._pool
        return pool

    def _enter_thread(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        if getattr(self._local, "busy", False):
            # A nested write would wait for the row lock its own outer transaction holds.
            raise StorageError("transactions do not nest: finish the open one first")
        self._local.busy = True

    def _begin(self, write: bool) -> Conn:
        """A pooled connection inside BEGIN (and, for writers, holding the store lock).

        A connection that died while idle in the pool fails right here, before any work of
        the caller: it is discarded and another one tried, up to the pool size plus one."""
        pool = self._get_pool()
        for attempt in range(self.max_size + 1):
            try:
                conn = pool.getconn()
            except PoolTimeout as exc:
                raise StorageError(
                    f"no PostgreSQL connection to {self.display_url} within"
                    f" {self.pool_timeout:g} s (pool of {self.max_size}; is the server up?)"
                ) from exc
            except PoolClosed as exc:
                raise StorageError("the store is closed") from exc
            try:
                if write:
                    cursor = conn.execute(_BEGIN_WRITE)
                    cursor.nextset()
                    if cursor.fetchone() is None:
                        raise StorageError(
                            "signer.store_state has no row, so writers cannot be serialised:"
                            " run stellaops db migrate"
                        )
                else:
                    conn.execute(_BEGIN_READ)
                return conn
            except psycopg.Error as exc:
                broken = conn.broken
                self._release(conn)
                if broken and attempt < self.max_size:
                    continue
                raise _storage_error(exc, "begin") from exc
            except BaseException:
                self._release(conn)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _release(self, conn: Conn) -> None:
        """Back to the pool, rolled back. A connection in an unknown state is closed first;
        the pool discards closed or broken connections and opens replacements."""
        try:
            status = conn.info.transaction_status
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                conn.execute(b"ROLLBACK")
            elif status != TransactionStatus.IDLE:
                conn.close()
        except psycopg.Error:
            conn.close()
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            pool.putconn(conn)

    def _end(self, conn: Conn, tx: PostgresTransaction, *, commit: bool) -> None:
        try:
            if commit:
                self._commit(conn)
        finally:
            self._release(conn)  # rolls back if we did not commit
            tx.finish()

    @staticmethod
    def _commit(conn: Conn) -> None:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            # PostgreSQL turns COMMIT of a failed transaction into a silent ROLLBACK; a caller
            # that swallowed the error must not believe its writes were kept.
            raise StorageError(
                "the transaction failed earlier (an error was caught inside it) and was rolled back"
            )
        try:
            cursor = conn.execute(b"COMMIT")
        except psycopg.Error as exc:
            if conn.broken:
                raise StorageError(
                    f"PostgreSQL commit failed: {_one_line(exc)} (the connection was lost"
                    " during COMMIT, so the transaction may or may not have been committed)"
                ) from exc
            raise _storage_error(exc, "commit") from exc
        if cursor.statusmessage != "COMMIT":
            raise StorageError("PostgreSQL rolled the transaction back instead of committing")

    # --- the port -------------------------------------------------------------------------

    def transaction(self) -> _TxContext:
        return _TxContext(self, True)

    def read(self) -> _TxContext:
        return _TxContext(self, False)

    def change_token(self) -> int:
        """``signer.store_state.change_counter``: bumped by statement triggers once in every
        transaction that writes, by this process or any other (manual SQL included), and only
        when that transaction commits. One single-row query on a dedicated connection;
        comparable across store objects on the same database."""
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        with self._token_lock:
            for attempt in range(2):
                conn = self._token_connection()
                try:
                    row = conn.execute(_COUNTER_SQL).fetchone()
                except psycopg.Error as exc:
                    if conn.broken and attempt == 0:
                        conn.close()  # reconnect once: the server restarted or killed it
                        continue
                    raise _storage_error(exc, "change check") from exc
                if row is None:
                    raise StorageError("signer.store_state has no row: run stellaops db migrate")
                return int(row[0])
        raise AssertionError("unreachable")  # pragma: no cover

    def schema_version(self) -> int:
        return self._schema

    def close(self) -> None:
        """Close the pool and the change-token connection. Call it when no transaction runs."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return
        if self._pool is not None:
            self._pool.close()
        if self._token_conn is not None:
            self._token_conn.close()
            self._token_conn = None

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_schema(conn: Conn, display_url: str) -> int:
    latest = load_postgres_migrations()[-1].version
    try:
        current = schema_version(conn)
    except psycopg.Error as exc:
        raise _storage_error(exc, "schema check") from exc
    if current is None:
        raise StorageError(
            f"{display_url} has no stellakeys schema yet: run"
            " `stellaops db migrate --database-url <url>` first"
        )
    check_not_newer(current, latest, "PostgreSQL")
    if current < latest:
        raise StorageError(
            f"the PostgreSQL schema at {display_url} is version {current}; this stellakeys"
            f" needs {latest}: run `stellaops db migrate --database-url <url>`"
        )
    return current


if TYPE_CHECKING:

    def _conforms(store: PostgresStore, tx: PostgresTransaction) -> tuple[Store, Transaction]:
        return store, tx

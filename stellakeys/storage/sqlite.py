"""The SQLite storage adapter: the embedded default, one file per home.

Design (docs/decisions/0004-storage.md has the reasoning):

* WAL journal, so readers never block the writer and the writer never blocks readers.
* Write transactions start with ``BEGIN IMMEDIATE``: the database write lock is taken up front,
  which serialises writers across processes. Reading the audit head and appending the next
  event therefore happen under one lock, and the hash chain stays one line. In front of it, a
  per-store ``threading.Lock`` queues this process's threads, so they wait on each other
  instead of polling SQLite's busy handler.
* ``busy_timeout`` (30 s by default) makes another process's writer wait, not fail.
* Read transactions use a deferred ``BEGIN``: the snapshot is taken at the first read and held
  until the end, so a multi-query read (anchors, then their history) is consistent.
* One connection per thread (``threading.local``), created lazily and reused, so the statement
  cache of each connection stays warm. ``check_same_thread=False`` only lets :meth:`close`
  close other threads' connections; no connection is ever used by two threads at once.
* Instants are INTEGER microseconds since the epoch; UUIDs TEXT; JSON TEXT with sorted keys.
* Schema changes are numbered SQL files in ``migrations/sqlite``, applied in order inside one
  ``BEGIN IMMEDIATE`` transaction and recorded in ``schema_migrations``.
* Only SQLite opens and closes the database, ``-wal`` and ``-shm`` files. Closing *any*
  descriptor of a file drops every POSIX lock this process holds on it, those of open
  connections included, which lets other processes run recovery or delete the WAL under
  them. A new database is made 0600 by a restrictive umask around the connection that
  creates it; an existing one is only ``os.stat``-ed. docs/decisions/0011 goes through
  SQLite's corruption hazards one by one.
"""

# S608: every statement here is assembled from module constants (column lists, "?" runs);
# values are always bound parameters, never formatted into SQL.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent, AuditQuery, AuditRecord, chain_event
from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState
from stellakeys.ceremony.policy import PolicyVersion
from stellakeys.errors import ConflictError, NotFoundError, StorageError
from stellakeys.intents import KeyIntent
from stellakeys.keys import KeyRecord
from stellakeys.storage import _ceremony_codec as cc
from stellakeys.storage import _codec as codec
from stellakeys.storage import _intent_codec as ic
from stellakeys.storage._migrations import (
    Migration,
    check_not_newer,
    load_migrations,
    packaged_migrations,
)
from stellakeys.storage.ports import FeedVersionRecord, ProofRecord

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = [
    "DB_FILENAME",
    "Migration",
    "SqliteStore",
    "SqliteTransaction",
    "apply_migrations",
    "load_migrations",
]

#: The database file inside a stellakeys home.
DB_FILENAME: Final = "stellakeys.db"
DEFAULT_BUSY_TIMEOUT: Final = 30.0

# Host parameters per statement; SQLite allows 32766 but long IN lists stop being useful.
_CHUNK = 500
_FETCH = 256

_T = TypeVar("_T")
Row = tuple[Any, ...]

# Connections inherited through fork() belong to the parent: using or even closing them in the
# child is unsafe (SQLite's documented rule: sqlite3_close() in the child may checkpoint and
# delete a WAL that is not its own, losing other processes' commits). They are parked here,
# never touched. The before-fork hook references every live connection first, because the
# child discards the other threads' locals, which would otherwise close their connections.
# "Referenced forever" must include interpreter shutdown, which clears module globals and so
# would close them too: the child leaks one reference to the list (_leak), so its refcount
# never reaches zero. The kernel closes the descriptors when the child exits, which is safe.
_INHERITED: list[object] = []
_STORES: weakref.WeakSet[SqliteStore] = weakref.WeakSet()
_FORK_STASH: list[object] = []

# os.umask is process-wide. This lock serialises our own changes (two stores creating files at
# once would otherwise "restore" each other's temporary mask) and keeps fork() out of the
# window, so a child never starts with the temporary mask.
_UMASK_LOCK = threading.Lock()


def _leak(obj: object) -> None:
    """Take a reference to ``obj`` that is never released, not even at interpreter exit."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _before_fork() -> None:
    _UMASK_LOCK.acquire()
    _FORK_STASH[:] = [(list(s._holders), s._dv) for s in list(_STORES)]


def _after_fork_in_parent() -> None:
    _FORK_STASH.clear()
    _UMASK_LOCK.release()


def _after_fork_in_child() -> None:
    if _FORK_STASH:
        _INHERITED.append(list(_FORK_STASH))
        _leak(_INHERITED)
    _FORK_STASH.clear()
    _UMASK_LOCK.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


# --- errors ---------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _storage_error(exc: sqlite3.Error, doing: str) -> StorageError:
    message = _one_line(exc)
    if "locked" in message or "busy" in message:
        message += " (another writer held the database longer than the busy timeout)"
    return StorageError(f"SQLite {doing} failed: {message}")


# --- migrations -----------------------------------------------------------------------------


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """The highest applied version, or None when the database has no migrations table."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return int(row[0]) if row[0] is not None else 0


def apply_migrations(
    conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None
) -> int:
    """Apply the missing migrations in order, all in one write transaction, and return the
    schema version. Safe to run again (a no-op) and from several processes at once: the
    ``BEGIN IMMEDIATE`` makes the second migrator wait, then it finds nothing to do.

    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    migrations = packaged_migrations("sqlite") if migrations is None else tuple(migrations)
    latest = migrations[-1].version if migrations else 0
    try:
        # Fast path without the write lock: opening an up-to-date store never waits behind
        # another process's long write transaction.
        current = _schema_version(conn)
        if current is not None and current >= latest:
            check_not_newer(current, latest)
            return current
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _storage_error(exc, "schema check") from exc
    doing = "schema migration"
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY NOT NULL,"
            " name TEXT NOT NULL,"
            " applied_at INTEGER NOT NULL)"
        )
        applied = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
        check_not_newer(max(applied, default=0), latest)
        for migration in migrations:
            if migration.version in applied:
                continue
            doing = f"schema migration {migration.version:04d}_{migration.name}"
            for statement in migration.statements():
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time_ns() // 1000),
            )
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise _storage_error(exc, doing) from exc
        raise
    return latest


# --- transactions ---------------------------------------------------------------------------


_SELECT_KEY = f"SELECT {codec.KEY_COLUMNS} FROM keys"
_SELECT_ANCHOR = f"SELECT {codec.ANCHOR_COLUMNS} FROM trust_anchors"
_SELECT_HISTORY = f"SELECT {codec.HISTORY_COLUMNS} FROM key_history"
_SELECT_AUDIT = f"SELECT {codec.AUDIT_COLUMNS} FROM key_audit_log"
_SELECT_CEREMONY = f"SELECT {cc.CEREMONY_COLUMNS} FROM ceremonies"
_SELECT_APPROVAL = f"SELECT {cc.APPROVAL_COLUMNS} FROM ceremony_approvals"
_HISTORY_ORDER = " ORDER BY anchor_id, added_at, key_id"


@functools.cache
def _in_list(n: int) -> str:
    return ", ".join("?" * n)


@functools.cache
def _anchors_by_index_sql(n: int) -> str:
    # Served by idx_trust_anchors_index_key (index_key, active): one index probe per key.
    return (
        f"{_SELECT_ANCHOR} WHERE index_key IN ({_in_list(n)}) AND active = 1"
        " ORDER BY created_at, id"
    )


@functools.cache
def _history_of_anchors_sql(n: int) -> str:
    # Served by idx_key_history_validity (anchor_id, added_at, revoked_at).
    return f"{_SELECT_HISTORY} WHERE anchor_id IN ({_in_list(n)}){_HISTORY_ORDER}"


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class SqliteTransaction:
    """A transaction on a :class:`SqliteStore`; use it only inside its ``with`` block."""

    __slots__ = ("_conn", "_cursors", "_writable", "open")

    def __init__(self, conn: sqlite3.Connection, *, writable: bool) -> None:
        self._conn = conn
        self._writable = writable
        # Cursors of streaming reads, closed when the transaction ends.
        self._cursors: list[sqlite3.Cursor] = []
        self.open = True

    # --- plumbing -------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.open:
            raise StorageError("the transaction is finished; open a new one")

    def _check_write(self) -> None:
        self._check()
        if not self._writable:
            # SQLite would silently upgrade the deferred read transaction to a write one,
            # bypassing the writer serialisation; refuse instead.
            raise StorageError("write inside a read-only transaction")

    def _exec(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        conflict: Callable[[str], str] | None = None,
        missing: str | None = None,
    ) -> sqlite3.Cursor:
        """Execute one statement, mapping constraint failures to the port's errors and every
        other SQLite error to a one-line StorageError."""
        try:
            return self._conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            if conflict is not None and text.startswith("UNIQUE constraint failed"):
                raise ConflictError(conflict(text)) from None
            if missing is not None and text.startswith("FOREIGN KEY constraint failed"):
                raise NotFoundError(missing) from None
            raise _storage_error(exc, "write") from exc
        except sqlite3.Error as exc:
            raise _storage_error(exc, "statement") from exc

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "query") from exc

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            row: Row | None = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "query") from exc
        return row

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        cursor = self._exec(sql, params)
        self._cursors.append(cursor)
        return self._rows(cursor)

    def _rows(self, cursor: sqlite3.Cursor) -> Iterator[Row]:
        while True:
            if not self.open:
                raise StorageError("the transaction ended while its rows were being read")
            try:
                rows = cursor.fetchmany(_FETCH)
            except sqlite3.Error as exc:
                raise _storage_error(exc, "query") from exc
            if not rows:
                return
            yield from rows

    def finish(self) -> None:
        self.open = False
        for cursor in self._cursors:
            with contextlib.suppress(sqlite3.Error):
                cursor.close()
        self._cursors.clear()

    # --- keys -----------------------------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord | None:
        self._check()
        row = self._one(_SELECT_KEY + " WHERE key_id = ?", (key_id,))
        return None if row is None else codec.key_from_row(row)

    def insert_key(self, record: KeyRecord) -> None:
        self._check_write()
        self._exec(
            f"INSERT INTO keys ({codec.KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.key_to_row(record),
            conflict=lambda _: f"key {record.key_id!r} already exists",
        )

    def list_keys(self) -> list[KeyRecord]:
        self._check()
        return [
            codec.key_from_row(r) for r in self._all(_SELECT_KEY + " ORDER BY created_at, key_id")
        ]

    # --- key lifecycle intents -----------------------------------------------------------

    def put_intent(self, intent: KeyIntent) -> None:
        self._check_write()
        self._exec(
            f"INSERT OR REPLACE INTO key_intents ({ic.INTENT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ic.intent_to_row(intent),
        )

    def get_intent(self, key_id: str) -> KeyIntent | None:
        self._check()
        row = self._one(f"SELECT {ic.INTENT_COLUMNS} FROM key_intents WHERE key_id = ?", (key_id,))
        return None if row is None else ic.intent_from_row(row)

    def list_intents(self) -> list[KeyIntent]:
        self._check()
        rows = self._all(f"SELECT {ic.INTENT_COLUMNS} FROM key_intents ORDER BY created_at, key_id")
        return [ic.intent_from_row(r) for r in rows]

    def delete_intent(self, key_id: str) -> None:
        self._check_write()
        self._exec("DELETE FROM key_intents WHERE key_id = ?", (key_id,))

    # --- trust anchors and key history ----------------------------------------------------

    def _with_history(self, anchor_rows: list[Row]) -> list[TrustAnchor]:
        """Attach history to anchors with one query per chunk of anchors (not one per anchor)."""
        if not anchor_rows:
            return []
        uuids = {r[0]: uuid.UUID(r[0]) for r in anchor_rows}
        history: dict[str, list[KeyHistoryEntry]] = {aid: [] for aid in uuids}
        ids = list(history)
        for chunk in _chunks(ids):
            for h in self._all(_history_of_anchors_sql(len(chunk)), chunk):
                history[h[1]].append(codec.history_from_row(h, uuids[h[1]]))
        return [codec.anchor_from_row(r, tuple(history[r[0]]), uuids[r[0]]) for r in anchor_rows]

    def get_anchor(self, anchor_id: uuid.UUID) -> TrustAnchor | None:
        self._check()
        row = self._one(_SELECT_ANCHOR + " WHERE id = ?", (str(anchor_id),))
        return None if row is None else self._with_history([row])[0]

    def insert_anchor(self, anchor: TrustAnchor, index_key: str) -> None:
        self._check_write()
        codec.check_history_belongs(anchor)
        self._exec(
            f"INSERT INTO trust_anchors ({codec.ANCHOR_COLUMNS}, index_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*codec.anchor_to_row(anchor), index_key),
            conflict=lambda _: f"trust anchor {anchor.anchor_id} already exists",
        )
        for entry in anchor.key_history:
            self._insert_history(entry)

    def set_anchor_active(self, anchor_id: uuid.UUID, active: bool) -> None:
        self._check_write()
        cursor = self._exec(
            "UPDATE trust_anchors SET active = ? WHERE id = ?", (int(active), str(anchor_id))
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"no trust anchor {anchor_id}")

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        self._check()
        where = " WHERE active = 1" if active_only else ""
        anchors = self._all(f"{_SELECT_ANCHOR}{where} ORDER BY created_at, id")
        # All history in one ordered pass rather than per anchor or per IN-chunk.
        hwhere = (
            " WHERE anchor_id IN (SELECT id FROM trust_anchors WHERE active = 1)"
            if active_only
            else ""
        )
        history: dict[str, list[KeyHistoryEntry]] = {r[0]: [] for r in anchors}
        for h in self._stream(f"{_SELECT_HISTORY}{hwhere}{_HISTORY_ORDER}"):
            bucket = history.get(h[1])
            if bucket is not None:
                bucket.append(codec.history_from_row(h))
        return [codec.anchor_from_row(r, tuple(history[r[0]])) for r in anchors]

    def anchors_by_index_keys(self, index_keys: Sequence[str]) -> list[TrustAnchor]:
        self._check()
        keys = list(dict.fromkeys(index_keys))
        rows: list[Row] = []
        for chunk in _chunks(keys):
            rows += self._all(_anchors_by_index_sql(len(chunk)), chunk)
        if len(keys) > _CHUNK:
            rows.sort(key=lambda r: (r[4], r[0]))
        return self._with_history(rows)

    def anchors_below_index_key(self, index_key: str) -> list[TrustAnchor]:
        self._check()
        # A range on idx_trust_anchors_index_key: '0' is the character after '/' in BINARY
        # collation, so [key + '/', key + '0') is exactly the keys continuing with '/'.
        rows = self._all(
            f"{_SELECT_ANCHOR} WHERE index_key >= ? AND index_key < ? AND active = 1"
            " ORDER BY created_at, id",
            (index_key + "/", index_key + "0"),
        )
        return self._with_history(rows)

    def _insert_history(self, entry: KeyHistoryEntry) -> None:
        def conflict(text: str) -> str:
            if "key_history.id" in text:
                return f"key history entry {entry.entry_id} already exists"
            return f"key {entry.key_id!r} is already in trust anchor {entry.anchor_id}"

        self._exec(
            f"INSERT INTO key_history ({codec.HISTORY_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.history_to_row(entry),
            conflict=conflict,
            missing=f"no trust anchor {entry.anchor_id}",
        )

    def insert_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        self._insert_history(entry)

    def update_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        row = codec.history_to_row(entry)
        # The triggers of migration 0003 refuse the same; checked first for a ConflictError.
        old = self._one(
            "SELECT revoked_at, revoke_reason, expires_at FROM key_history"
            " WHERE anchor_id = ? AND key_id = ?",
            (row[1], row[2]),
        )
        if old is None:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")
        codec.check_history_update(entry.key_id, (old[0], old[1], old[2]), (row[7], row[8], row[9]))
        cursor = self._exec(
            "UPDATE key_history SET revoked_at = ?, revoke_reason = ?, expires_at = ?,"
            " metadata = ? WHERE anchor_id = ? AND key_id = ?",
            (*row[7:11], row[1], row[2]),
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")

    def history_of_key(self, key_id: str) -> list[KeyHistoryEntry]:
        self._check()
        rows = self._all(
            _SELECT_HISTORY + " WHERE key_id = ? ORDER BY added_at, anchor_id", (key_id,)
        )
        return [codec.history_from_row(r) for r in rows]

    def history_by_fingerprints(self, fingerprints: Collection[str]) -> list[KeyHistoryEntry]:
        self._check()
        rows: list[Row] = []
        for chunk in _chunks(list(dict.fromkeys(fingerprints))):
            marks = ", ".join("?" * len(chunk))
            rows += self._all(_SELECT_HISTORY + f" WHERE fingerprint IN ({marks})", chunk)
        rows.sort(key=lambda r: (r[6], r[1], r[2]))
        return [codec.history_from_row(r) for r in rows]

    # --- proofs -----------------------------------------------------------------------------

    def put_proof(self, proof: ProofRecord) -> None:
        self._check_write()
        cursor = self._exec(
            f"INSERT INTO proofs ({codec.PROOF_COLUMNS}) VALUES (?, ?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            codec.proof_to_row(proof),
        )
        if cursor.rowcount == 1:  # a new proof: its tokens come with it
            for token in proof.timestamp_tokens:
                self._add_token(proof.digest, token)

    def _add_token(self, digest: str, token: bytes) -> None:
        self._exec(
            "INSERT INTO proof_timestamps (digest, token) VALUES (?, ?)"
            " ON CONFLICT (digest, token) DO NOTHING",
            (digest, bytes(token)),
            missing=f"no proof {digest}",
        )

    def get_proof(self, digest: str) -> ProofRecord | None:
        self._check()
        row = self._one(f"SELECT {codec.PROOF_COLUMNS} FROM proofs WHERE digest = ?", (digest,))
        if row is None:
            return None
        tokens = self._all(
            "SELECT token FROM proof_timestamps WHERE digest = ? ORDER BY id", (digest,)
        )
        return codec.proof_from_row(row, tuple(bytes(t[0]) for t in tokens))

    def add_proof_timestamp(self, digest: str, token: bytes) -> None:
        self._check_write()
        self._add_token(digest, token)

    def iter_proofs(self) -> Iterator[ProofRecord]:
        self._check()
        rows = self._stream(
            "SELECT p.digest, p.envelope_json, p.created_at, t.token FROM proofs AS p"
            " LEFT JOIN proof_timestamps AS t ON t.digest = p.digest"
            " ORDER BY p.created_at, p.digest, t.id"
        )
        return codec.group_proofs(rows, codec.proof_from_row)

    # --- feed versions ----------------------------------------------------------------------

    def feed_versions(self) -> list[FeedVersionRecord]:
        self._check()
        rows = self._all("SELECT version, digest, published_at FROM feed_versions ORDER BY version")
        return [FeedVersionRecord(r[0], r[1], codec.from_micros(r[2])) for r in rows]

    def insert_feed_version(self, record: FeedVersionRecord) -> None:
        self._check_write()
        published = codec.to_micros(record.published_at)
        # Checked first for a precise message (the write lock is held since BEGIN IMMEDIATE,
        # so the answer cannot go stale); the primary key, the UNIQUE digest and the no-gap
        # trigger enforce the same rules for any other writer.
        (highest,) = self._one("SELECT coalesce(max(version), 0) FROM feed_versions") or (0,)
        if record.version != highest + 1:
            raise ConflictError(codec.feed_version_conflict(record.version, highest))
        self._exec(
            "INSERT INTO feed_versions (version, digest, published_at) VALUES (?, ?, ?)",
            (record.version, record.digest, published),
            conflict=lambda text: (
                f"proof {record.digest} already holds a feed version"
                if "digest" in text
                else codec.feed_version_conflict(record.version, record.version)
            ),
            missing=f"no proof {record.digest}",
        )

    # --- ceremonies -------------------------------------------------------------------------

    def _with_approvals(self, rows: list[Row]) -> list[Ceremony]:
        """Attach approvals with one query per chunk of ceremonies (not one per ceremony)."""
        if not rows:
            return []
        approvals: dict[str, list[Approval]] = {r[0]: [] for r in rows}
        ids = list(approvals)
        for chunk in _chunks(ids):
            sql = (
                f"{_SELECT_APPROVAL} WHERE ceremony_id IN ({_in_list(len(chunk))})"
                " ORDER BY approved_at, id"
            )
            for a in self._all(sql, chunk):
                approvals[a[1]].append(cc.approval_from_row(a))
        return [cc.ceremony_from_row(r, approvals[r[0]]) for r in rows]

    def get_ceremony(self, ceremony_id: str) -> Ceremony | None:
        self._check()
        row = self._one(_SELECT_CEREMONY + " WHERE id = ?", (ceremony_id,))
        return None if row is None else self._with_approvals([row])[0]

    def insert_ceremony(self, ceremony: Ceremony) -> None:
        self._check_write()
        if ceremony.approvals:
            raise ValueError("insert a ceremony without approvals; add them with insert_approval")
        self._exec(
            f"INSERT INTO ceremonies ({cc.CEREMONY_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            cc.ceremony_to_row(ceremony),
            conflict=lambda _: f"ceremony {ceremony.ceremony_id} already exists",
        )

    def update_ceremony(self, ceremony: Ceremony) -> None:
        self._check_write()
        current = self._one("SELECT state FROM ceremonies WHERE id = ?", (ceremony.ceremony_id,))
        if current is None:
            raise NotFoundError(f"no ceremony {ceremony.ceremony_id}")
        if CeremonyState(current[0]).terminal:
            # The schema's trigger would refuse it too; say it as the port does.
            raise ConflictError(
                f"ceremony {ceremony.ceremony_id} is {current[0]}: a terminal ceremony never"
                " changes"
            )
        self._exec(
            "UPDATE ceremonies SET state = ?, executed_at = ?, result = ?, cancelled_at = ?,"
            " cancel_reason = ?, notifications_sent = ? WHERE id = ?",
            (*cc.mutable_part(cc.ceremony_to_row(ceremony)), ceremony.ceremony_id),
        )

    def insert_approval(self, approval: Approval) -> None:
        self._check_write()

        def conflict(text: str) -> str:
            if "ceremony_approvals.approver" in text:
                return f"{approval.approver} has already decided on ceremony {approval.ceremony_id}"
            return f"approval {approval.approval_id} already exists"

        self._exec(
            f"INSERT INTO ceremony_approvals ({cc.APPROVAL_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            cc.approval_to_row(approval),
            conflict=conflict,
            missing=f"no ceremony {approval.ceremony_id}",
        )

    def list_ceremonies(self, states: Collection[CeremonyState] | None = None) -> list[Ceremony]:
        self._check()
        if states is None:
            rows = self._all(_SELECT_CEREMONY + " ORDER BY created_at, id")
        else:
            values = sorted({s.value for s in states})
            if not values:
                return []
            rows = self._all(
                f"{_SELECT_CEREMONY} WHERE state IN ({_in_list(len(values))})"
                " ORDER BY created_at, id",
                values,
            )
        return self._with_approvals(rows)

    # --- dual-control policy ---------------------------------------------------------------

    def ceremony_policy_versions(self) -> list[PolicyVersion]:
        self._check()
        rows = self._all(
            "SELECT version, policy, recorded_at, recorded_by, ceremony_id"
            " FROM ceremony_policy ORDER BY version"
        )
        return [
            PolicyVersion(r[0], r[1].encode("utf-8"), codec.from_micros(r[2]), r[3], r[4])
            for r in rows
        ]

    def insert_ceremony_policy(self, version: PolicyVersion) -> None:
        self._check_write()
        self._exec(
            "INSERT INTO ceremony_policy (version, policy, recorded_at, recorded_by, ceremony_id)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                version.version,
                version.policy_json.decode("utf-8"),
                codec.to_micros(version.recorded_at),
                version.recorded_by,
                version.ceremony_id,
            ),
            conflict=lambda _: f"ceremony policy version {version.version} already exists",
            missing=f"no ceremony {version.ceremony_id}",
        )

    # --- audit ------------------------------------------------------------------------------

    def append_audit(self, record: AuditRecord) -> AuditEvent:
        self._check_write()
        # The write lock is held since BEGIN IMMEDIATE, so nobody can append between reading
        # the head and inserting its successor.
        row = self._one(_SELECT_AUDIT + " ORDER BY seq DESC LIMIT 1")
        event = chain_event(None if row is None else codec.audit_from_row(row), record)
        self._exec(
            f"INSERT INTO key_audit_log ({codec.AUDIT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.audit_to_row(event),
            conflict=lambda _: f"audit event {record.event_id} already exists",
        )
        return event

    def audit_events(self, query: AuditQuery | None = None) -> list[AuditEvent]:
        self._check()
        if query is None:
            return list(self.iter_audit())
        codec.check_query(query)
        where: list[str] = []
        params: list[Any] = []
        exact = True
        if query.event_type is not None:
            pattern = query.event_type
            if "[" in pattern:
                # Character classes differ between fnmatch and GLOB ([!x] vs [^x]): narrow by
                # the literal prefix in SQL and let AuditQuery.matches decide.
                exact = False
                pattern = re.split(r"[*?\[]", pattern, maxsplit=1)[0] + "*"
            # GLOB is case-sensitive with * and ?, exactly like fnmatch.fnmatchcase.
            where.append("event_type GLOB ?")
            params.append(pattern)
        if query.since is not None:
            where.append("timestamp >= ?")
            params.append(codec.to_micros(query.since))
        if query.until is not None:
            where.append("timestamp <= ?")
            params.append(codec.to_micros(query.until))
        if query.key_id is not None:
            where.append("key_id = ?")
            params.append(query.key_id)
        if query.anchor_id is not None:
            where.append("anchor_id = ?")
            params.append(str(query.anchor_id))
        if query.ceremony_id is not None:
            where.append("ceremony_id = ?")
            params.append(query.ceremony_id)
        sql = _SELECT_AUDIT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        if exact and query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        out: list[AuditEvent] = []
        if query.limit == 0:
            return out
        for row in self._stream(sql, params):
            event = codec.audit_from_row(row)
            if exact or query.matches(event):
                out.append(event)
                if query.limit is not None and len(out) >= query.limit:
                    break
        return out

    def iter_audit(self) -> Iterator[AuditEvent]:
        self._check()
        return map(codec.audit_from_row, self._stream(_SELECT_AUDIT + " ORDER BY seq"))


class _Holder:
    """A thread's connection. sqlite3.Connection cannot be weakly referenced; this can, so
    the store can find (and close) live connections without keeping dead threads' ones.

    The holder closes its connection when it goes (its thread ended, its store was dropped
    unclosed). Left alone, the connection would stay open until the cyclic garbage collector
    found it (Python's sqlite3 keeps a reference cycle through its statement cache), and that
    collection may run in a forked child, where closing it is the hazard of fork(). A holder
    inherited by a child is parked in ``_INHERITED`` and never goes."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class _TxContext:
    """``with store.transaction()`` / ``with store.read()``: a class rather than a generator
    context manager because reads are on the verification hot path."""

    __slots__ = ("_changes", "_conn", "_store", "_tx", "_write")

    def __init__(self, store: SqliteStore, write: bool) -> None:
        self._store = store
        self._write = write

    def __enter__(self) -> SqliteTransaction:
        store = self._store
        conn = store._connection()
        if conn.in_transaction:
            # Nesting on one connection is impossible in SQLite, and a write nested in a read
            # would deadlock on the writer lock; say so plainly.
            raise StorageError("transactions do not nest: finish the open one first")
        if self._write:
            store._write_lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
        except sqlite3.Error as exc:
            if self._write:
                store._write_lock.release()
            raise _storage_error(exc, "begin") from exc
        except BaseException:
            if self._write:
                store._write_lock.release()
            raise
        if self._write:
            try:
                store._check_file()
            except BaseException:
                store._rollback(conn)
                store._write_lock.release()
                raise
        self._conn = conn
        self._changes = conn.total_changes
        self._tx = SqliteTransaction(conn, writable=self._write)
        return self._tx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, store = self._conn, self._store
        self._tx.finish()
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as error:
                    store._rollback(conn)
                    raise _storage_error(error, "commit") from error
                if self._write and conn.total_changes != self._changes:
                    # Still under the writer lock, so a plain increment is safe.
                    store._own_commits += 1
            else:
                store._rollback(conn)
        finally:
            if self._write:
                store._write_lock.release()


class SqliteStore:
    """The embedded :class:`~stellakeys.storage.ports.Store`: ``SqliteStore(path)`` or
    ``SqliteStore.open_home(home)`` (``home / "stellakeys.db"``, home created 0700).

    Usable from many threads and many processes at once. Applies missing schema migrations
    when opened (``migrate=False`` only checks that the schema is not newer than the code).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        migrate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._closed = False
        self._reset_process_state()
        self._own_commits = 0
        self._identity = _existing_identity(self.path)
        _STORES.add(self)
        conn = self._connection()
        if self._identity is None:  # created by that connection, 0600
            self._identity = _existing_identity(self.path)
        _enable_wal(conn, self.path, busy_timeout)
        if migrate:
            self._schema = apply_migrations(conn)
        else:
            try:
                current = _schema_version(conn) or 0
            except sqlite3.Error as exc:
                raise _storage_error(exc, "schema check") from exc
            check_not_newer(current, packaged_migrations("sqlite")[-1].version)
            self._schema = current

    @classmethod
    def open_home(
        cls, home: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> SqliteStore:
        """The store of a stellakeys home; the directory is created with mode 0700 (it holds
        the audit trail and, with the software key store, private keys)."""
        home = Path(home)
        try:
            home.mkdir(mode=0o700, parents=True)
            os.chmod(home, 0o700)  # the umask may have removed bits from mkdir's mode
        except FileExistsError:
            pass  # an existing home keeps the permissions its owner chose
        except OSError as exc:
            raise StorageError(f"cannot create {home}: {exc.strerror}") from None
        return cls(home / DB_FILENAME, busy_timeout=busy_timeout)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # --- connections ----------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._holders_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dv_lock = threading.Lock()
        self._dv: _Holder | None = None

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # We are a forked child: the parent's connections and locks are not ours.
            _INHERITED.append((list(self._holders), self._dv))
            _leak(_INHERITED)
            self._reset_process_state()

    def _connect(self) -> sqlite3.Connection:
        try:
            if self._identity is None:
                conn = _connect_creating(self.path, self.busy_timeout)
            else:
                # mode=rw: a file deleted or renamed since the store opened is an error here,
                # never a new empty database under the old name.
                conn = _sqlite_connect(_uri(self.path, "rw"), self.busy_timeout)
            conn.execute("PRAGMA foreign_keys = ON")
            # FULL: a commit survives power loss too; this is an audit trail.
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {_one_line(exc)}") from exc
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is None:
            holder = _Holder(self._connect())
            self._local.holder = holder
            with self._holders_lock:
                self._holders.add(holder)
        return holder.conn

    def _check_file(self) -> None:
        """Refuse to write when the path no longer names the file this store opened (deleted,
        renamed, or replaced by a restore): the commit would land in an orphaned file, or next
        to another file's WAL. One ``stat`` per write transaction, no descriptor."""
        try:
            now = _existing_identity(self.path)
        except StorageError:
            now = None
        if now != self._identity:
            raise StorageError(
                f"{self.path} was deleted, renamed or replaced while this store had it open;"
                " stop every process using it, put the file back, and open the store again"
            )

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back is not reused; SQLite discards the
            # uncommitted changes when it is closed.
            holder: _Holder | None = getattr(self._local, "holder", None)
            if holder is not None and holder.conn is conn:
                del self._local.holder
            conn.close()

    # --- the port -------------------------------------------------------------------------

    def transaction(self) -> _TxContext:
        return _TxContext(self, True)

    def read(self) -> _TxContext:
        return _TxContext(self, False)

    def change_token(self) -> tuple[int, int]:
        """``(PRAGMA data_version, commits by this store)``.

        ``data_version`` on a dedicated connection changes whenever any *other* connection
        commits, which includes other processes and this store's per-thread connections. The
        own-commit counter makes this store's writes visible without relying on that detail.
        Tokens are comparable only with tokens from the same store object. One cheap PRAGMA
        (a read of the WAL index header), no disk I/O."""
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        with self._dv_lock:
            if self._dv is None:
                self._dv = _Holder(self._connect())
            try:
                (version,) = self._dv.conn.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error as exc:
                raise _storage_error(exc, "change check") from exc
        return (int(version), self._own_commits)

    def schema_version(self) -> int:
        return self._schema

    def close(self) -> None:
        """Close every connection of this store. Call it when no transaction is running."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return
        with self._holders_lock:
            holders = list(self._holders)
            self._holders.clear()
        for holder in holders:
            holder.conn.close()
        with self._dv_lock:
            if self._dv is not None:
                self._dv.conn.close()
                self._dv = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _uri(path: Path, mode: str) -> str:
    # SQLite URI: the path percent-encoded ("?" or "#" in a directory name stay literal).
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


def _sqlite_connect(uri: str, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(
        uri,
        uri=True,
        timeout=timeout,  # sqlite3_busy_timeout: wait for other writers
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # only so close() may close it from another thread
        cached_statements=256,
    )


def _connect_creating(path: Path, timeout: float) -> sqlite3.Connection:
    """Open ``path``, creating it 0600 if missing, without ever holding a descriptor of it
    ourselves: SQLite creates it (0644 minus the umask) under a umask that also removes group
    and other bits. SQLite gives the -wal and -shm files the database file's mode.

    The umask is process-wide, so for these few microseconds another thread that creates a
    file gets it without group/other permissions: stricter than asked, never looser, which
    is acceptable for a library that holds signing keys (docs/decisions/0011)."""
    with _UMASK_LOCK:
        old = os.umask(0o077)
        try:
            if old & ~0o077:
                os.umask(old | 0o077)  # keep whatever stricter mask the process had
            return _sqlite_connect(_uri(path, "rwc"), timeout)
        finally:
            os.umask(old)


def _existing_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of an existing database file, None when it does not exist yet. Only
    ``stat``: opening and closing a descriptor would drop this process's SQLite locks.

    A file with several hard links is refused: SQLite names its -wal and -shm files after the
    path, so two names for one database mean two WALs for one file, which corrupts it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"cannot open {path}: not a regular file")
    if st.st_nlink > 1:
        raise StorageError(
            f"cannot open {path}: it has {st.st_nlink} hard links, and SQLite would keep one"
            " WAL per name; remove the other links (copy a database with sqlite3's .backup,"
            " never with a hard link)"
        )
    return (st.st_dev, st.st_ino)


def _enable_wal(conn: sqlite3.Connection, path: Path, timeout: float) -> None:
    """Switch the file to WAL (persistent; a no-op once done). Changing the journal mode may
    report "locked" without consulting the busy handler, so retry until the busy timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise _storage_error(exc, "enabling WAL") from exc
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise StorageError(
            f"cannot use WAL journaling for {path} (journal mode {mode!r}); put the home on a"
            " local filesystem"
        )


if TYPE_CHECKING:

    def _conforms(store: SqliteStore, tx: SqliteTransaction) -> tuple[Store, Transaction]:
        return store, tx

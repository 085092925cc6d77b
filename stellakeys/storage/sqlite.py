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

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from stellakeys.errors import StorageError
from stellakeys.storage._migrations import (
    Migration,
    check_not_newer,
    load_migrations,
    packaged_migrations,
)
from stellakeys.storage._sql import SqlStore
from stellakeys.storage._sql import one_line as _one_line
from stellakeys.storage._sqlite_repos import SqliteTransaction, select_proof
from stellakeys.storage._sqlite_repos import storage_error as _storage_error

if TYPE_CHECKING:
    from stellakeys.storage.ports import ProofRecord, Store, Transaction

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
    import ctypes  # only in a forked child: a plain verification never loads ctypes

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

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
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


class SqliteStore(SqlStore):
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

    def read_proof(self, digest: str) -> ProofRecord | None:
        """``with store.read() as tx: tx.get_proof(digest)`` in one statement and no explicit
        transaction (the verification-by-address path, issue 20): a single SELECT in autocommit
        mode is its own consistent snapshot, so BEGIN and COMMIT would only cost two more
        statements. The digest of the stored bytes is checked as in ``get_proof``."""
        conn = self._connection()
        if conn.in_transaction:
            raise StorageError("transactions do not nest: finish the open one first")
        return select_proof(conn, digest)

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

    def _close_connections(self) -> None:
        with self._holders_lock:
            holders = list(self._holders)
            self._holders.clear()
        for holder in holders:
            holder.conn.close()
        with self._dv_lock:
            if self._dv is not None:
                self._dv.conn.close()
                self._dv = None


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

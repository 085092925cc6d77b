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
  bump once per transaction that writes any table, whoever the writer is: one round trip on a
  dedicated connection (strict, the default), or, with ``max_staleness``, a value kept current
  by LISTEN/NOTIFY and confirmed at least that often (:mod:`._postgres_token`, decision 0024).
* ``read_proof_and_token()``: a stored proof, its tokens and (strict) the change counter in
  one autocommit statement, for a verification by address to run on (decision 0030).
* ``pooler="transaction"``: the URL is a PgBouncer in transaction pooling mode. No server-side
  prepared statements and no session settings beyond TimeZone (which PgBouncer carries over);
  the writers' lock_timeout is set per transaction. LISTEN needs a direct ``listen_url``.
* Connections come from a psycopg_pool pool, in autocommit mode with explicit
  BEGIN/COMMIT. A pooled connection that died while idle (server restart,
  ``pg_terminate_backend``) is detected by the transaction's first statement and replaced
  transparently; one that dies mid-transaction fails that transaction (the server rolls it
  back) and is discarded.
"""

# S608: every statement is assembled from module constants (column lists); values are always
# bound parameters, never formatted into SQL.

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from stellakeys.errors import StorageError
from stellakeys.storage._postgres_migrate import (
    MIGRATION_LOCK_KEY as MIGRATION_LOCK_KEY,
)
from stellakeys.storage._postgres_migrate import (
    MigrationResult,
    check_schema,
    load_postgres_migrations,
    migrate,
    schema_version,
)
from stellakeys.storage._postgres_proof import PROOF_AND_TOKEN_SQL, PROOF_SQL, proof_and_token
from stellakeys.storage._postgres_repos import PostgresTransaction
from stellakeys.storage._postgres_sql import (  # re-exported: tests read their query plans
    _ANCHORS_BELOW_INDEX as _ANCHORS_BELOW_INDEX,
)
from stellakeys.storage._postgres_sql import (
    _ANCHORS_BY_INDEX as _ANCHORS_BY_INDEX,
)
from stellakeys.storage._postgres_sql import ADAPTERS
from stellakeys.storage._postgres_sql import storage_error as _storage_error
from stellakeys.storage._postgres_token import ChangeListener, PendingToken, TokenReader
from stellakeys.storage._sql import SqlStore
from stellakeys.storage._sql import one_line as _one_line

if TYPE_CHECKING:
    from stellakeys.storage.ports import ProofRecord, Store, Transaction

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

DEFAULT_LOCK_TIMEOUT: Final = 30.0
DEFAULT_POOL_TIMEOUT: Final = 30.0
_FETCH = 256

Conn = psycopg.Connection[tuple[Any, ...]]
Row = tuple[Any, ...]
_T = TypeVar("_T")

# Connections and pools inherited through fork() belong to the parent. Closing them in the
# child would send libpq's Terminate message down the shared socket and end the parent's
# session, so they are parked here, referenced forever, never touched.
_INHERITED: list[object] = []


# --- URLs ---------------------------------------------------------------------------------


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


_migrate = migrate  # PostgresStore's ``migrate`` flag shadows the name inside it


def _direct_connection(url: str, kwargs: dict[str, Any] | None = None) -> Conn:
    options = kwargs or {"autocommit": True, "context": ADAPTERS}
    try:
        return psycopg.Connection.connect(
            url, **{"fallback_application_name": "stellakeys", **options}
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


_BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def _begin_read(conn: Conn) -> None:
    conn.execute(_BEGIN_READ)


# One round trip: BEGIN and the write lock, sent as one simple query.
_BEGIN_WRITE = b"BEGIN ISOLATION LEVEL READ COMMITTED;"
_LOCK_WRITE = b" SELECT change_counter FROM signer.store_state WHERE id = 1 FOR UPDATE"
#: The values of ``pooler``: None (a direct connection) or "transaction" (PgBouncer's mode).
POOLERS: Final = (None, "transaction")


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

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self._store._end(self._conn, self._tx, commit=exc_type is None)
        finally:
            self._store._local.busy = False


class PostgresStore(SqlStore):
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
        max_staleness: float | None = None,
        listen_url: str | None = None,
        pooler: str | None = None,
    ) -> None:
        if max_staleness is not None and not (0 < max_staleness < math.inf):
            raise StorageError(
                f"max_staleness must be a positive number of seconds, not {max_staleness!r}"
            )
        if pooler not in POOLERS:
            raise StorageError(f"pooler must be 'transaction' (PgBouncer) or None, not {pooler!r}")
        self._url = url
        self.display_url = redact_url(url)
        self.min_size, self.max_size = min_size, max_size
        self.lock_timeout, self.pool_timeout = lock_timeout, pool_timeout
        self.max_staleness, self.pooler = max_staleness, pooler
        # LISTEN through a transaction pooler would listen on whichever server connection the
        # pooler picked for that one statement: only a direct connection can listen.
        self._listen_url = listen_url if listen_url is not None or pooler else url
        self._begin_write = (
            _BEGIN_WRITE
            + (
                f" SET LOCAL lock_timeout TO {int(lock_timeout * 1000)};".encode()
                if pooler
                else b""
            )
            + _LOCK_WRITE
        )
        self._write_results = 3 if pooler else 2
        self._conn_kwargs: dict[str, Any] = {
            "autocommit": True,
            "context": ADAPTERS,
            "fallback_application_name": "stellakeys",
        }
        if pooler:
            # Statements psycopg would prepare stay on the server connection PgBouncer gave
            # this transaction; the next transaction may get another one.
            self._conn_kwargs["prepare_threshold"] = None
        # Session settings for every connection: times come back as aware UTC (psycopg maps
        # the session TimeZone to the datetime's tzinfo); writers wait lock_timeout at most;
        # statements psycopg has prepared (run five times or more) keep their generic plan.
        # Without that, PostgreSQL re-plans the anchor lookup on every call (its generic plan
        # for "= ANY($1)" looks costlier than the custom ones), and planning took twice as
        # long as executing. Every repeated statement here is an index lookup whose best plan
        # does not depend on the values.
        self._session_sql = (
            "SET TimeZone TO 'UTC'"  # PgBouncer tracks TimeZone and carries it over
            if pooler
            else "SET TimeZone TO 'UTC'; SET plan_cache_mode TO force_generic_plan;"
            f" SET lock_timeout TO {int(lock_timeout * 1000)}"
        ).encode()
        self._closed = False
        self._reset_process_state()
        conn = self._token.connection()  # a direct connection: its errors say what is wrong
        try:
            if migrate:
                self._schema = _migrate(conn).current
            else:
                self._schema = check_schema(conn, self.display_url)
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
        max_staleness: float | None = None,
        listen_url: str | None = None,
        pooler: str | None = None,
    ) -> PostgresStore:
        """Open a store on ``url`` (``postgresql://`` or ``postgres://``, any libpq URL).

        ``migrate=False`` (the default) refuses a database whose schema is missing or older
        than this stellakeys, asking for ``stellaops db migrate``; ``migrate=True`` applies
        the missing migrations first (tests, single-tenant tools). ``max_size`` bounds the
        pool; a transaction waits up to ``pool_timeout`` seconds for a connection and a writer
        up to ``lock_timeout`` seconds for the write lock.

        ``max_staleness`` (seconds; default None, strict): caches may miss a commit for at
        most that long, and warm verification makes no round trip (LISTEN/NOTIFY on
        ``listen_url``, default ``url`` unless ``pooler`` is set). ``pooler="transaction"``:
        ``url`` is a PgBouncer in transaction pooling mode (docs/postgres.md)."""
        return cls(
            url,
            migrate=migrate,
            min_size=min_size,
            max_size=max_size,
            lock_timeout=lock_timeout,
            pool_timeout=pool_timeout,
            max_staleness=max_staleness,
            listen_url=listen_url,
            pooler=pooler,
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
        self._token = TokenReader(self._connect, prepared=self.pooler is None)
        #: Readers for reads sent ahead (send_change_token), idle ones here; one per
        #: verification in flight, so concurrent verifications never queue on one connection,
        #: but at most ``max_size`` connections (then the synchronous read, strict as well).
        self._ahead_lock = threading.Lock()
        self._ahead: list[TokenReader] = []
        self._ahead_opened = 0
        self._listener: ChangeListener | None = None  # started by the first change_token()

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's connections and threads are not ours (the
            # listener's thread did not even survive the fork); new ones start on demand.
            listener = self._listener
            _INHERITED.append((self._pool, self._token.parked(), listener and listener.parked()))
            _INHERITED.extend(r.parked() for r in self._ahead)
            self._reset_process_state()

    def _configure(self, conn: Conn) -> None:
        conn.execute(self._session_sql)

    def _connect(self, url: str | None = None) -> Conn:
        conn = _direct_connection(url or self._url, self._conn_kwargs)
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise _storage_error(exc, "session setup") from exc
        return conn

    def _get_pool(self) -> ConnectionPool[Conn]:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self._url,
                        connection_class=psycopg.Connection,
                        kwargs=self._conn_kwargs,
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
        """A pooled connection inside BEGIN (and, for writers, holding the store lock)."""
        return self._pooled(self._lock_write if write else _begin_read, "begin")[0]

    def _lock_write(self, conn: Conn) -> None:
        cursor = conn.execute(self._begin_write)
        for _ in range(self._write_results - 1):
            cursor.nextset()
        if cursor.fetchone() is None:
            raise StorageError(
                "signer.store_state has no row, so writers cannot be serialised:"
                " run stellaops db migrate"
            )

    def _pooled(self, first: Callable[[Conn], _T], doing: str) -> tuple[Conn, _T]:
        """A pooled connection and what ``first`` (its first statement) returned; the caller
        releases the connection. One that died while idle in the pool fails right here, before
        any work of the caller: it is discarded and another one tried, up to the pool size
        plus one."""
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
                return conn, first(conn)
            except psycopg.Error as exc:
                broken = conn.broken
                self._release(conn)
                if broken and attempt < self.max_size:
                    continue
                raise _storage_error(exc, doing) from exc
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

    def read_proof(self, digest: str) -> ProofRecord | None:
        """``with store.read() as tx: tx.get_proof(digest)`` as one statement in autocommit
        mode on an idle pooled connection (decision 0030): one snapshot, no BEGIN/COMMIT. The
        stored bytes are checked against ``digest`` as in ``get_proof``."""
        return self._read_proof(digest, with_token=False)[0]

    def read_proof_and_token(self, digest: str) -> tuple[ProofRecord | None, int | None]:
        """:meth:`read_proof` and, in strict mode, :meth:`change_token` in the same statement
        and snapshot, taken after this call: every commit that finished before the call is
        counted, as in ``change_token()``, so a verification of this proof that starts before
        the call can use it as its change token and read none. The token is None with
        ``max_staleness`` (``change_token()`` makes no round trip there) or without a proof."""
        return self._read_proof(digest, with_token=self.max_staleness is None)

    def _read_proof(
        self, digest: str, *, with_token: bool
    ) -> tuple[ProofRecord | None, int | None]:
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        if getattr(self._local, "busy", False):
            # Inside a transaction a proof comes from tx.get_proof, in that snapshot.
            raise StorageError("transactions do not nest: finish the open one first")
        sql = PROOF_AND_TOKEN_SQL if with_token else PROOF_SQL
        conn, rows = self._pooled(lambda c: c.execute(sql, (digest,)).fetchall(), "proof read")
        self._release(conn)  # idle again (autocommit): back to the pool as it came
        return proof_and_token(rows, with_token)

    def change_token(self) -> int:
        """``signer.store_state.change_counter``: bumped by statement triggers once in every
        transaction that writes, by this process or any other (manual SQL included), and only
        when that transaction commits; comparable across store objects on the same database.

        Strict (default): read now, one round trip on a dedicated connection, so a commit
        that finished before this call is always counted. With ``max_staleness``: the value
        the listener keeps, confirmed by the server within the last ``max_staleness`` seconds,
        else read now (and that read counts as a confirmation)."""
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        if self.max_staleness is not None:
            listener = self._listener or self._start_listener()
            now = time.monotonic()
            token = listener.current(now)
            if token is not None:
                return token
            token = self._read_token()
            listener.advance(token, now)
            return token
        return self._read_token()

    def _read_token(self) -> int:
        with self._token_lock:
            return self._token.read()

    def send_change_token(self) -> PendingToken | None:
        """Send the strict read of :meth:`change_token` without waiting for it: the counter
        as of a snapshot the server takes *after* this call, so a commit that finished before
        the call is counted, as in :meth:`change_token`. ``result()`` on the answer waits for
        it (None: no answer to trust; read synchronously instead). None here when there is
        nothing to send ahead: with ``max_staleness``, :meth:`change_token` makes no round
        trip; or the send failed. Decision 0027."""
        if self._closed:
            raise StorageError("the store is closed")
        self._check_process()
        if self.max_staleness is not None:
            return None
        with self._ahead_lock:
            reader = self._ahead.pop() if self._ahead else None
            if reader is None:
                if self._ahead_opened >= self.max_size:
                    return None  # as many verifications in flight as connections allowed
                self._ahead_opened += 1
        if reader is None:
            reader = TokenReader(self._connect, prepared=self.pooler is None)
        if not reader.send():
            self._give_back(reader)
            return None
        return PendingToken(reader, self._give_back)

    def _give_back(self, reader: TokenReader) -> None:
        if self._pid != os.getpid():  # taken before a fork: the parent's connection
            _INHERITED.append(reader.parked())
            return
        with self._ahead_lock:
            if not self._closed:
                self._ahead.append(reader)
                return
        reader.close()

    def _start_listener(self) -> ChangeListener:
        assert self.max_staleness is not None
        with self._token_lock:
            if self._listener is None:
                url = self._listen_url
                # Through a pooler without a listen_url: no listener, only confirmed reads.
                connect = (lambda: self._connect(url)) if url else _refuse_listen
                self._listener = ChangeListener(connect, self.max_staleness)
            return self._listener

    def _close_connections(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        if self._pool is not None:
            self._pool.close()
        self._token.close()
        with self._ahead_lock:
            readers, self._ahead = self._ahead, []
        for reader in readers:
            reader.close()


def _refuse_listen() -> Conn:
    raise StorageError("no listen_url: LISTEN does not work through a transaction pooler")


if TYPE_CHECKING:

    def _conforms(store: PostgresStore, tx: PostgresTransaction) -> tuple[Store, Transaction]:
        return store, tx

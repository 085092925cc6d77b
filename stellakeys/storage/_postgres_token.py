"""The change token of :class:`~stellakeys.storage.postgres.PostgresStore`, in its two modes
(decision 0024).

* **Strict** (the default): every ``change_token()`` reads ``signer.store_state.change_counter``
  on a dedicated autocommit connection, so a commit that finished before the call is always
  seen. The read is one round trip and nothing else: straight on libpq (``PGconn``), without
  psycopg's cursor machinery, which cost more than the round trip itself (38 µs against 17 µs
  measured; decision 0024). Directly on PostgreSQL it executes a named prepared statement
  (Bind/Execute/Sync); through a transaction pooler (PgBouncer ``pool_mode = transaction``),
  where a prepared statement may sit on another server connection, the unnamed one
  (Parse/Bind/Execute/Sync), still one round trip.
* **Bounded staleness** (``max_staleness`` seconds, opt-in): a background thread LISTENs on
  :data:`CHANNEL` (migration 0008 makes the counter's trigger ``pg_notify`` the new value, which
  PostgreSQL delivers only when the writing transaction commits) and re-reads the counter as a
  heartbeat. ``change_token()`` answers from memory while the last confirmed read is younger
  than the bound, else falls back to the strict read (whose answer then counts as a confirmed
  read), so the bound holds whatever happens to the listener.

Strict reads can also be *sent* without waiting (:meth:`TokenReader.send`, answered by
:class:`PendingToken`): a verification sends the read when it starts, works on its cached
anchors meanwhile and collects the answer before it returns (decision 0027), so the round trip
runs beside the signature check instead of before it.
"""

from __future__ import annotations

import contextlib
import math
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg.pq import ConnStatus, ExecStatus, TransactionStatus

from stellakeys.errors import StorageError

__all__ = ["CHANNEL", "ChangeListener", "PendingToken", "TokenReader"]

#: The NOTIFY channel of migration 0008; the payload is the new change_counter.
CHANNEL: Final = "stellakeys_change"
COUNTER_SQL: Final = b"SELECT change_counter FROM signer.store_state WHERE id = 1"
_STATEMENT: Final = b"stellakeys_change_token"
_NO_ROW: Final = "signer.store_state has no row: run stellaops db migrate"

Conn = psycopg.Connection[tuple[Any, ...]]


class TokenReader:
    """The strict read on one dedicated connection (the caller serialises calls)."""

    __slots__ = ("_conn", "_connect", "_prepared", "_ready")

    def __init__(self, connect: Callable[[], Conn], *, prepared: bool) -> None:
        self._connect = connect
        self._prepared = prepared
        self._conn: Conn | None = None
        self._ready = False

    def connection(self) -> Conn:
        """The dedicated connection (opened on demand; also used for the schema check)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._ready = False
        return self._conn

    def _prepare(self, pg: psycopg.pq.abc.PGconn) -> None:
        if self._prepared and not self._ready:
            result = pg.prepare(_STATEMENT, COUNTER_SQL)
            if result.status == ExecStatus.COMMAND_OK:
                self._ready = True

    def read(self) -> int:
        for attempt in range(2):
            pg = self.connection().pgconn
            self._prepare(pg)
            if self._ready:
                result = pg.exec_prepared(_STATEMENT, None)
            elif not self._prepared:
                result = pg.exec_params(COUNTER_SQL, None)
            if result.status == ExecStatus.TUPLES_OK:
                if result.ntuples != 1:
                    raise StorageError(_NO_ROW)
                value = result.get_value(0, 0)
                assert value is not None
                return int(value)
            message = (result.error_message or pg.error_message).decode("utf-8", "replace")
            if pg.status == ConnStatus.BAD and attempt == 0:
                self.close()  # reconnect once: the server restarted or ended the session
                continue
            first = message.strip().splitlines()[0] if message.strip() else "no answer"
            lost = " (connection to PostgreSQL lost)" if pg.status == ConnStatus.BAD else ""
            raise StorageError(f"PostgreSQL change check failed: {first}{lost}")
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self) -> bool:
        """Send the counter read and return at once; :meth:`collect` waits for the answer.
        Nothing else may use the connection in between. False: not sent (the connection could
        not be opened or the send failed; it is closed, and the caller reads synchronously,
        which reconnects or reports the error)."""
        try:
            pg = self.connection().pgconn
            self._prepare(pg)
            if self._ready:
                pg.send_query_prepared(_STATEMENT, None)
            elif self._prepared:
                return False  # the PREPARE failed: the synchronous read reports why
            else:
                pg.send_query_params(COUNTER_SQL, None)  # the unnamed statement (PgBouncer)
        except (psycopg.Error, StorageError):
            self.close()
            return False
        return True

    def collect(self) -> int | None:
        """The answer to :meth:`send`, or None when there is none to trust (an error, the
        connection lost mid-flight, an unexpected reply). After None the connection is closed
        and reopened on next use: a later query can never read this one's answer."""
        conn = self._conn
        if conn is None:
            return None
        pg = conn.pgconn
        value: int | None = None
        try:
            result = _next_result(pg)
            if (
                result is not None
                and result.status == ExecStatus.TUPLES_OK
                and result.ntuples == 1
                and (raw := result.get_value(0, 0)) is not None
            ):
                value = int(raw)
            while _next_result(pg) is not None:  # the rest of this query's answer
                value = None  # one statement, one result: anything more is not ours
        except (psycopg.Error, OSError, ValueError):
            value = None
        if value is None or pg.transaction_status != TransactionStatus.IDLE:
            self.close()
            return None
        return value

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a connection already lost
                self._conn.close()
            self._conn = None

    def parked(self) -> object:
        """What a forked child must keep referenced and never touch (see postgres._INHERITED)."""
        return self._conn


def _next_result(pg: psycopg.pq.abc.PGconn) -> psycopg.pq.abc.PGresult | None:
    """The next result of the query in flight, waiting for the socket (GIL released) rather
    than in libpq's ``PQgetResult`` (which psycopg calls with the GIL held)."""
    if pg.is_busy():  # not all of it in libpq's buffer yet (is_busy makes no system call)
        pg.consume_input()
        while pg.is_busy():
            select.select([pg.socket], [], [])
            pg.consume_input()
    return pg.get_result()


class PendingToken:
    """A strict counter read in flight on a reader taken from the store for it (decision 0027).

    ``result()`` waits for the answer (once; None: none to trust, read synchronously instead)
    and gives the reader back; ``discard()`` does the same for a verification that ended with
    an exception, so the connection is never left with an answer pending."""

    __slots__ = ("_reader", "_release")

    def __init__(self, reader: TokenReader, release: Callable[[TokenReader], None]) -> None:
        self._reader: TokenReader | None = reader
        self._release = release

    def result(self) -> int | None:
        reader, self._reader = self._reader, None
        if reader is None:
            return None
        try:
            return reader.collect()
        finally:
            self._release(reader)

    def discard(self) -> None:
        if self._reader is not None:
            self.result()


class ChangeListener:
    """LISTEN on :data:`CHANNEL` in a daemon thread, with a heartbeat read of the counter.

    ``confirmed`` is a monotonic time T such that every transaction that committed before T
    is counted in ``token``: the time a counter read was *sent* (its snapshot is taken after
    that). A notification raises ``token`` at once but not ``confirmed``: PostgreSQL delivers
    notifications in commit order, yet a commit just before it may still be in flight."""

    def __init__(self, connect: Callable[[], Conn], max_staleness: float) -> None:
        self._connect = connect
        self.max_staleness = max_staleness
        # Several heartbeats per bound, at most one a second (a cheap query), at least 10 ms.
        self.interval = min(max(max_staleness / 3, 0.01), 1.0)
        self._state: tuple[int, float] = (-1, -math.inf)  # (token, confirmed), swapped whole
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Conn | None = None
        self.alive = False  # listening and heard from the server (for tests and diagnostics)
        self._thread = threading.Thread(target=self._run, name="stellakeys-listen", daemon=True)
        self._thread.start()

    def current(self, now: float) -> int | None:
        """The token if confirmed within the bound at monotonic time ``now``, else None."""
        token, confirmed = self._state
        return token if now - confirmed <= self.max_staleness else None

    def advance(self, token: int, confirmed: float = -math.inf) -> None:
        with self._lock:
            old_token, old_confirmed = self._state
            self._state = (max(old_token, token), max(old_confirmed, confirmed))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn = conn = self._connect()
                conn.execute(f"LISTEN {CHANNEL}")
                while not self._stop.is_set():
                    sent = time.monotonic()
                    row = conn.execute(COUNTER_SQL).fetchone()
                    if row is None:
                        raise StorageError(_NO_ROW)
                    self.advance(int(row[0]), sent)
                    self.alive = True
                    for notify in conn.notifies(timeout=self.interval):
                        self.advance(int(notify.payload))
            except (psycopg.Error, StorageError, ValueError):
                # Lost or refused: change_token() falls back to strict reads meanwhile.
                self.alive = False
                self._stop.wait(self.interval)
            finally:
                self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a dead connection
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1.0)

    def parked(self) -> object:
        return self._conn

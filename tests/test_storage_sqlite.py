"""The SQLite adapter: the conformance suite on a real file, plus what only a file-backed,
multi-process store has to get right (migrations, WAL, permissions, several processes writing
one home, crashes)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from storage_conformance import StoreConformance, anchor, audit_record, key, proof

from stellakeys.audit import verify_chain
from stellakeys.errors import StorageError
from stellakeys.storage._codec import to_micros
from stellakeys.storage.sqlite import (
    DB_FILENAME,
    Migration,
    SqliteStore,
    apply_migrations,
    load_migrations,
)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
LATEST = load_migrations()[-1].version


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "conformance.db")
        yield store
        store.close()

    def tamper_history(
        self,
        store: SqliteStore,  # type: ignore[override]
        anchor_id: uuid.UUID,
        key_id: str,
        column: str,
        value: datetime | str | None,
    ) -> None:
        # Another connection to the file, the schema's guards dropped first.
        stored = to_micros(value) if isinstance(value, datetime) else value
        with raw(store.path) as conn:
            triggers = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'key_history'"
            ).fetchall()
            for (name,) in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            changed = conn.execute(
                f"UPDATE key_history SET {column} = ? WHERE anchor_id = ? AND key_id = ?",
                (stored, str(anchor_id), key_id),
            ).rowcount
        assert changed == 1


# --- helpers --------------------------------------------------------------------------------


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection for looking at the file behind the adapter's back."""
    return sqlite3.connect(path, isolation_level=None, timeout=30)


def count(path: Path, table: str) -> int:
    with raw(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


PRELUDE = """
import os, sys, time
from pathlib import Path
from stellakeys.storage.sqlite import SqliteStore
from storage_conformance import anchor, audit_record, key

def wait_for_go(go):
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
"""


class Children:
    """Python subprocesses running a snippet, started together through a "go" file so they
    really contend (interpreter start-up takes longer than the work itself)."""

    def __init__(self, tmp_path: Path) -> None:
        self.go = tmp_path / "go"
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, code: str, *args: object) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
        proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), str(self.go), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def wait_line(self, proc: subprocess.Popen[str], expected: str) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != expected:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"child said {line!r} instead of {expected!r}: {err}")

    def release(self) -> None:
        for proc in self.procs:
            self.wait_line(proc, "ready")
        self.go.touch()

    def finish(self, timeout: float = 180) -> list[str]:
        outputs = []
        for proc in self.procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"child failed ({proc.returncode}): {err}"
            outputs.append(out)
        return outputs


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    kids = Children(tmp_path)
    yield kids
    for proc in kids.procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --- file, WAL, permissions -----------------------------------------------------------------


def test_open_home_creates_a_private_home(tmp_path: Path) -> None:
    home = tmp_path / "deep" / "home"
    with SqliteStore.open_home(home) as store:
        assert store.path == home / DB_FILENAME
        with store.transaction() as tx:
            tx.insert_key(key("k1"))
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / DB_FILENAME).stat().st_mode & 0o777 == 0o600
    # An existing home keeps the permissions its owner gave it.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    SqliteStore.open_home(shared).close()
    assert shared.stat().st_mode & 0o777 == 0o750


def test_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        conn = store._connection()
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent


def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        SqliteStore(tmp_path / "nope" / "s.db")
    assert "\n" not in str(info.value) and "nope" in str(info.value)


def test_locked_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path, busy_timeout=0.2) as store:
        blocker = raw(path)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(StorageError) as info, store.transaction() as tx:
                tx.insert_key(key("k1"))
            assert time.monotonic() - started >= 0.15  # it waited for the busy timeout
            assert "locked" in str(info.value) and "\n" not in str(info.value)
            # Readers are not blocked by a writer (WAL).
            with store.read() as tx:
                assert tx.list_keys() == []
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with store.transaction() as tx:  # and the store recovers once the lock is gone
            tx.insert_key(key("k1"))


def test_audit_log_and_history_rows_cannot_be_deleted_or_edited(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store, store.transaction() as tx:
        tx.insert_key(key("k1"))
        tx.insert_anchor(anchor(keys=("k1",)), "npm")
        tx.append_audit(audit_record())
    with raw(path) as conn:
        for sql in (
            "UPDATE key_audit_log SET actor = 'mallory'",
            "DELETE FROM key_audit_log",
            "DELETE FROM keys",
            "DELETE FROM trust_anchors",
            "DELETE FROM key_history",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)


# --- the hot path ---------------------------------------------------------------------------


def test_anchor_lookup_is_two_indexed_queries(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.db") as store:
        with store.transaction() as tx:
            for i in range(200):
                tx.insert_anchor(anchor(f"pkg:npm/p{i}", keys=("a", "b", "c")), f"npm/p{i % 20}")
        conn = store._connection()
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        try:
            with store.read() as tx:
                found = tx.anchors_by_index_keys(["npm/p1", "npm/p2", "npm/p3", "none", ""])
        finally:
            conn.set_trace_callback(None)
        assert len(found) == 30 and all(len(a.key_history) == 3 for a in found)
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 2, statements  # anchors, then all their history: no N+1
        plans = [" ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + s)) for s in selects]
        assert "USING INDEX idx_trust_anchors_index_key" in plans[0]
        assert "SEARCH key_history USING INDEX" in plans[1]


def test_a_page_of_proof_candidates_costs_its_size_not_the_whole_list(tmp_path: Path) -> None:
    """``anchor status`` reads an anchor's proofs in pages (issue 20). Counted in SQLite VM
    steps, deterministic: a page of 50 from a key with 3,000 candidates, first or late, costs
    about what a page from a key with 150 does. A query that sorted every remaining candidate
    for each page (the first version of this pagination) cost 10-20 times more, which made
    the status of a big anchor quadratic."""
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        with store.transaction() as tx:
            for i in range(3000):
                tx.put_proof(proof(f"p{i}"))
        with raw(path) as db:
            db.execute("INSERT INTO proof_subject_keys SELECT 'big', digest FROM proofs")
            db.execute(
                "INSERT INTO proof_subject_keys"
                " SELECT 'small', digest FROM proofs ORDER BY digest LIMIT 150"
            )
        conn = store._connection()

        def steps(key: str, after: str | None) -> tuple[int, list[str]]:
            ticks = [0]

            def tick() -> int:
                ticks[0] += 1
                return 0

            conn.set_progress_handler(tick, 10)
            try:
                with store.read() as tx:
                    page = [p.digest for p in tx.iter_proof_candidates(key, after, 50)]
            finally:
                conn.set_progress_handler(None, 10)
            return ticks[0], page

        with store.read() as tx:
            every = [p.digest for p in tx.iter_proof_candidates("big")]
        small, small_page = steps("small", None)
        first, first_page = steps("big", None)
        late, late_page = steps("big", every[2499])
    assert len(every) == 3000 and first_page == small_page == every[:50]
    assert late_page == every[2500:2550]
    assert first < 3 * small and late < 3 * small, (small, first, late)


# --- migrations -----------------------------------------------------------------------------


def test_fresh_database_gets_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        assert store.schema_version() == LATEST
    with raw(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, LATEST + 1))
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {
        "keys",
        "trust_anchors",
        "key_history",
        "key_audit_log",
        "proofs",
        "proof_timestamps",
        "idx_key_history_validity",
        "idx_audit_log_time",
        "idx_audit_log_key",
        "idx_audit_log_ceremony",
        "idx_trust_anchors_index_key",
    } <= names


def test_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    with raw(path) as conn:
        before = conn.execute("SELECT * FROM schema_migrations").fetchall()
    with SqliteStore(path) as store, store.transaction() as tx:
        tx.insert_key(key("k1"))
    with SqliteStore(path) as store, store.read() as tx:
        assert tx.get_key("k1") is not None
    with raw(path) as conn:
        assert conn.execute("SELECT * FROM schema_migrations").fetchall() == before


def test_migrations_apply_in_order_and_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    packaged = load_migrations()
    for m in packaged:
        (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    n = len(packaged)
    (folder / f"{n + 1:04d}_notes.sql").write_text(
        "-- a later change\nCREATE TABLE notes (body TEXT DEFAULT 'a;b');\n"
        "INSERT INTO notes VALUES ('x;y');\n"
    )
    path = tmp_path / "s.db"
    conn = raw(path)
    assert apply_migrations(conn, load_migrations(folder)) == n + 1
    assert apply_migrations(conn, load_migrations(folder)) == n + 1  # again: nothing to do
    assert conn.execute("SELECT body FROM notes").fetchall() == [("x;y",)]
    # A failing migration leaves nothing of itself behind, not even its first statements.
    (folder / f"{n + 2:04d}_broken.sql").write_text(
        "CREATE TABLE half (x);\nINSERT INTO half VALUES (1);\nTHIS IS NOT SQL;\n"
    )
    with pytest.raises(StorageError, match="broken"):
        apply_migrations(conn, load_migrations(folder))
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == n + 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
    assert not conn.in_transaction
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    with raw(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(StorageError, match="newer"):
        SqliteStore(path)
    with pytest.raises(StorageError, match="newer"):
        SqliteStore(path, migrate=False)


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x);")
    (tmp_path / "0003_c.sql").write_text("CREATE TABLE c (x);")
    (tmp_path / "README.md").write_text("ignored")
    with pytest.raises(StorageError, match="0003"):
        load_migrations(tmp_path)


def test_migration_statement_splitting() -> None:
    sql = (
        "CREATE TABLE t (x TEXT DEFAULT ';');\n"
        "-- a comment; with a semicolon\n"
        "CREATE TRIGGER tr BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'no; never'); END;\n"
        "-- trailing comment\n"
    )
    statements = Migration(1, "x", sql).statements()
    assert len(statements) == 2 and statements[1].endswith("END;")
    with pytest.raises(StorageError, match="incomplete"):
        Migration(2, "y", "CREATE TABLE u (x);\nCREATE TABLE v (x)").statements()


def test_two_processes_migrating_at_once(tmp_path: Path, children: Children) -> None:
    path = tmp_path / "fresh.db"
    code = """
        wait_for_go(sys.argv[1])
        store = SqliteStore(Path(sys.argv[2]))
        print(store.schema_version(), flush=True)
        store.close()
    """
    for _ in range(4):
        children.spawn(code, path)
    children.release()
    assert [out.strip() for out in children.finish()] == [str(LATEST)] * 4
    with raw(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, LATEST + 1))


# --- several processes, one home ------------------------------------------------------------


@pytest.mark.slow
def test_processes_writing_one_home_lose_nothing(tmp_path: Path, children: Children) -> None:
    home = tmp_path / "home"
    SqliteStore.open_home(home).close()
    code = """
        wait_for_go(sys.argv[1])
        name = sys.argv[3]
        store = SqliteStore.open_home(Path(sys.argv[2]))
        for i in range(100):
            with store.transaction() as tx:
                # Read-then-write (the audit head, then the insert): only a write lock taken
                # at BEGIN keeps another process from committing in between.
                tx.append_audit(audit_record(actor=name, key_id=f"{name}-{i}", details={"i": i}))
                tx.insert_key(key(f"{name}-{i}"))
        store.close()
    """
    procs = 4
    for p in range(procs):
        children.spawn(code, home, f"p{p}")
    children.release()
    children.finish()
    with SqliteStore.open_home(home) as store, store.read() as tx:
        keys = {k.key_id for k in tx.list_keys()}
        events = list(tx.iter_audit())
    assert keys == {f"p{p}-{i}" for p in range(procs) for i in range(100)}
    assert [e.seq for e in events] == list(range(1, procs * 100 + 1))
    assert verify_chain(events).ok
    for p in range(procs):
        assert [e.details["i"] for e in events if e.actor == f"p{p}"] == list(range(100))


def test_change_token_sees_other_processes_and_stores(tmp_path: Path, children: Children) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store, SqliteStore(path) as other:
        t0 = store.change_token()
        with other.transaction() as tx:  # another store object (another connection)
            tx.insert_key(key("k1"))
        t1 = store.change_token()
        assert t1 != t0
        children.spawn(
            """
            store = SqliteStore(Path(sys.argv[2]))
            with store.transaction() as tx:
                tx.insert_key(key("k2"))
            store.close()
            """,
            path,
        )
        children.finish()
        assert store.change_token() != t1


def test_store_works_in_a_forked_child(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    parked, forked, checked = threading.Event(), threading.Event(), threading.Event()
    results: list[set[str]] = []
    with SqliteStore(path) as store:
        with store.transaction() as tx:
            tx.insert_key(key("parent"))

        def other_thread() -> None:
            # Holds its own connection across the fork; the child must leave it alone.
            with store.read() as tx:
                tx.list_keys()
            parked.set()
            forked.wait(60)
            with store.read() as tx:
                results.append({k.key_id for k in tx.list_keys()})
            checked.set()

        helper = threading.Thread(target=other_thread)
        helper.start()
        # The usual fork-with-threads rule: no other thread may be inside SQLite (which holds
        # process-global mutexes) at the moment of fork(), so fork while the helper is parked.
        assert parked.wait(60)
        pid = os.fork()
        if pid == 0:  # the child: opens its own connections
            code = 1
            try:
                with store.transaction() as tx:
                    tx.insert_key(key("child"))
                    tx.append_audit(audit_record())
                store.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        forked.set()
        assert checked.wait(60)
        helper.join()
        assert results == [{"parent", "child"}]
        with store.read() as tx:  # the parent's own connection still works too
            assert {k.key_id for k in tx.list_keys()} == {"parent", "child"}
            assert verify_chain(tx.iter_audit()).count == 1


# --- crashes --------------------------------------------------------------------------------


def test_exception_mid_transaction_leaves_no_rows_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with (
        SqliteStore(path) as store,
        pytest.raises(ZeroDivisionError),
        store.transaction() as tx,
    ):
        for i in range(2000):
            tx.insert_key(key(f"k{i}", metadata={"pad": "x" * 2000}))
            tx.append_audit(audit_record(key_id=f"k{i}"))
        tx.insert_anchor(anchor(keys=("k1",)), "npm")
        _ = 1 / 0
    for table in ("keys", "key_audit_log", "trust_anchors", "key_history"):
        assert count(path, table) == 0, table


@pytest.mark.slow
def test_sigkill_inside_a_write_transaction(tmp_path: Path, children: Children) -> None:
    path = tmp_path / "s.db"
    proc = children.spawn(
        """
        store = SqliteStore(Path(sys.argv[2]))
        with store.transaction() as tx:
            for i in range(10):
                tx.insert_key(key(f"base-{i}"))
                tx.append_audit(audit_record(key_id=f"base-{i}"))
        with store.transaction() as tx:
            # Far more than the page cache holds, so uncommitted pages spill into the WAL.
            for i in range(4000):
                tx.insert_key(key(f"big-{i}", metadata={"pad": "x" * 2000}))
                tx.append_audit(audit_record(key_id=f"big-{i}"))
            tx.insert_anchor(anchor(keys=("big-1",)), "npm")
            print("inside", flush=True)
            time.sleep(120)
        """,
        path,
    )
    children.wait_line(proc, "inside")
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 1_000_000, "the uncommitted transaction should be on disk"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with raw(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert count(path, "keys") == 10
    assert count(path, "key_audit_log") == 10
    assert count(path, "trust_anchors") == 0 and count(path, "key_history") == 0
    with SqliteStore(path, busy_timeout=5) as store:
        with store.transaction() as tx:  # the dead writer's lock died with it
            tx.append_audit(audit_record())
        with store.read() as tx:
            check = verify_chain(tx.iter_audit())
        assert check.ok and check.count == 11


@pytest.mark.slow
def test_sigkill_while_committing_in_a_loop(tmp_path: Path, children: Children) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    procs = [
        children.spawn(
            """
            store = SqliteStore(Path(sys.argv[2]))
            name = sys.argv[3]
            i = 0
            while True:
                with store.transaction() as tx:
                    tx.insert_key(key(f"{name}-{i}"))
                    tx.append_audit(audit_record(actor=name, key_id=f"{name}-{i}"))
                i += 1
            """,
            path,
            name,
        )
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while count(path, "key_audit_log") < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.communicate(timeout=30)
    # Each key and its audit event were committed together or not at all.
    with SqliteStore(path) as store, store.read() as tx:
        keys = {k.key_id for k in tx.list_keys()}
        events = list(tx.iter_audit())
    assert len(events) >= 100
    assert keys == {e.key_id for e in events}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert verify_chain(events).ok


# --- threads and lifecycle ------------------------------------------------------------------


def test_each_thread_gets_its_own_connection_and_close_closes_them(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    seen: list[sqlite3.Connection] = []
    lock = threading.Lock()
    closed = threading.Event()

    def work() -> None:
        with store.read() as tx:
            tx.list_keys()
        with lock:
            seen.append(store._connection())
        closed.wait(30)  # stay alive: a finished thread's connection goes with it

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    while len(seen) < 4:
        time.sleep(0.01)
    assert len({id(c) for c in seen}) == 4
    store.close()
    closed.set()
    for t in threads:
        t.join()
    for conn in seen:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    with pytest.raises(StorageError):
        store.change_token()

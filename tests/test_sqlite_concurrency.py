"""SQLite's documented corruption hazards (https://www.sqlite.org/howtocorrupt.html), one test
or more for each that applies to stellakeys (docs/decisions/0011-sqlite-corruption-hazards.md
says which do and how each is excluded), and the reproduction of issue 21: a service that keeps
one store open and opens further stores per request, while CLI processes sign on the same home.

Every scenario runs in child processes: what is tested is what one process does to another's
locks, WAL and shared memory, and audit hooks and forks must not leak into the test runner."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from storage_conformance import key

from stellakeys.errors import StorageError
from stellakeys.storage.sqlite import DB_FILENAME, SqliteStore

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PASSPHRASE = "sqlite-concurrency-passphrase"


def child_env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    if home is not None:
        env.update(
            STELLAKEYS_HOME=str(home),
            STELLAKEYS_PASSPHRASE=PASSPHRASE,
            STELLAKEYS_ACTOR="ops@example.com",
        )
    return env


def python(code: str, *args: object, env: dict[str, str] | None = None) -> str:
    """Run a snippet in a fresh interpreter; fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or child_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def spawn(code: str, *args: object, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --- issue 21: the reproduction ---------------------------------------------------------------

#: Signs through the CLI (click's runner: the command's real code path, each invocation opening
#: and closing its own KeyManager as `stellaops sign` does): ``count`` signatures, or fewer if
#: the time cap comes first (a loaded CI machine), then it leaves a "done" file.
CLI_WRITER = """
    import json, sys, time
    from pathlib import Path
    from click.testing import CliRunner
    from stellakeys_cli.main import cli
    tag, count, seconds, done = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    runner, signed, errors = CliRunner(), [], []
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while len(signed) + len(errors) < count and time.monotonic() < deadline:
        result = runner.invoke(cli, ["sign", "--key-id", "svc"], input=f"{tag} {len(signed)}")
        if result.exit_code == 0:
            signed.append(result.output.strip())
        else:
            errors.append(result.output.strip()[:300])
        # A gap between invocations, as between CLI processes: now and then a writer closes
        # its store while no other writer has one open (the moment the bug needed).
        time.sleep(0.01 * (len(signed) % 3))
    Path(done).touch()
    print(json.dumps({"signed": signed, "errors": errors}))
"""

#: The service of the report: one long-lived KeyManager, plus one opened and closed per request.
SERVICE = """
    import json, os, sys, time
    from stellakeys import KeyManager
    from stellakeys.verification import VerificationPolicy
    digest, seconds, done = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    key_only = VerificationPolicy(require_anchor=False)  # the proofs name no artifact
    verified, errors = 0, []
    with KeyManager.open() as long_lived:
        assert long_lived.verify(digest, policy=key_only).ok
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not all(os.path.exists(d) for d in done):
            time.sleep(0.002)  # a request now and then, not a busy loop starving the writers
            try:
                with KeyManager.open() as per_request:
                    ok = per_request.verify(digest, policy=key_only).ok
                ok = ok and long_lived.verify(digest, policy=key_only).ok
                verified += ok
                if not ok:
                    errors.append("verification failed")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"verified": verified, "errors": errors[:5], "error_count": len(errors)}))
"""


def test_service_reopening_stores_beside_cli_writers_loses_nothing(tmp_path: Path) -> None:
    """Issue 21: before the fix, every store opened in the service did os.open/os.close on the
    database file, which dropped the long-lived store's POSIX locks; the CLI writers then
    checkpointed and deleted the WAL and shared memory under it ("database disk image is
    malformed", thousands of errors in seconds)."""
    from stellakeys import KeyManager
    from stellakeys.verification import VerificationPolicy

    home = tmp_path / "home"
    env = child_env(home)
    count, seconds = 40, 35.0  # 40 signatures per writer: seconds unloaded, capped if loaded
    # Key and first proof made by a child, with the passphrase in its environment only.
    first = python(
        """
        from stellakeys import KeyManager
        with KeyManager.open() as km:
            km.generate_key("svc")
            print(km.sign(b'{"first": true}', "svc", "application/json"))
        """,
        env=env,
    ).strip()
    done = [tmp_path / f"done-{tag}" for tag in ("w1", "w2")]
    service = spawn(SERVICE, first, seconds + 5, *done, env=env)
    writers = [
        spawn(CLI_WRITER, tag, count, seconds, marker, env=env)
        for tag, marker in zip(("w1", "w2"), done, strict=True)
    ]
    try:
        for proc in (service, *writers):
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)
        reports = []
        for proc in (service, *writers):
            out, err = proc.communicate(timeout=seconds + 60)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in (service, *writers):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    served, *signers = reports
    print(  # for the CI log: how much really ran
        f"service: {served['verified']} verified, {served['error_count']} errors;"
        f" CLI writers: {[len(r['signed']) for r in signers]} signed"
    )
    assert served["error_count"] == 0, served["errors"]
    assert served["verified"] > 0
    for report in signers:
        assert report["errors"] == []
    signed = [first] + [d for report in signers for d in report["signed"]]
    assert all(report["signed"] for report in signers)  # both writers really wrote
    assert integrity(home / DB_FILENAME) == "ok"
    key_only = VerificationPolicy(require_anchor=False)
    with KeyManager.open(home, actor="ops@example.com") as km:  # verifying needs no passphrase
        for digest in signed:
            assert km.verify(digest, policy=key_only).ok, digest  # stored, and verifies
        chain = km.verify_audit()
        assert chain.ok, chain
        audit_proofs = [
            e.details["proof"] for e in km.audit_events() if e.event_type == "PROOF_SIGNED"
        ]
    assert sorted(audit_proofs) == sorted(signed)


# --- hazard 2.2: POSIX locks dropped by a close() of another descriptor ------------------------

AUDITED_OPENS = """
    import os, sys
    from pathlib import Path
    home = Path(sys.argv[1])
    touched = []

    def hook(event, args):
        # os.open, open(), io.FileIO...: any descriptor Python opens. SQLite's own are not seen.
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.fsdecode(args[0])
            if "stellakeys.db" in name:
                touched.append(name)

    sys.addaudithook(hook)
    from click.testing import CliRunner
    from stellakeys import KeyManager
    from stellakeys.storage.sqlite import SqliteStore
    from stellakeys_cli.main import cli

    runner = CliRunner()
    def run(*args, input=None):
        result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    with KeyManager.open(home) as long_lived:          # creates the database
        long_lived.generate_key("k")
        with KeyManager.open(home) as second:          # an existing one, while the first is open
            second.sign(b"x", "k", "application/octet-stream")
        SqliteStore(home / "stellakeys.db", migrate=False).close()
        run("db", "migrate")
        run("db", "status")
        digest = run("sign", "--key-id", "k", input="payload").strip()
        run("verify", input=digest)
        run("key", "list")
        run("audit", "verify")
        long_lived.verify_audit()
    print(repr(touched))
"""


def test_no_descriptor_of_the_database_files_is_opened_outside_sqlite(tmp_path: Path) -> None:
    """Point 1 of issue 21, checked where it can be: Python's audit hook sees every file
    Python code opens (os.open included), so the library, the CLI's commands and the store's
    creation path are all covered; SQLite's own descriptors do not raise the event."""
    home = tmp_path / "home"
    out = python(AUDITED_OPENS, home, env=child_env(home))
    assert out.strip() == "[]"
    assert (home / DB_FILENAME).stat().st_mode & 0o777 == 0o600


def test_closing_a_second_store_keeps_the_first_stores_locks(tmp_path: Path) -> None:
    """The mechanism of issue 21, deterministically. While a store is open its connection holds
    a shared lock on the database file; another process closing the last connection it has
    checkpoints and deletes the WAL only when it can take the exclusive lock, that is, when no
    one else holds a lock. If opening a second store in this process dropped the first one's
    locks, the other process would delete the WAL and shared memory under the open store."""
    path = tmp_path / DB_FILENAME
    with SqliteStore(path) as first:
        with first.transaction() as tx:
            tx.insert_key(key("k1"))
        for _ in range(3):
            SqliteStore(path).close()  # per-request stores, as a service opens them
        python(
            """
            import sqlite3, sys
            conn = sqlite3.connect(sys.argv[1])
            conn.execute("SELECT count(*) FROM keys").fetchall()
            conn.close()  # the "last connection" clean-up, if it could get the exclusive lock
            """,
            path,
        )
        assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        with first.transaction() as tx:
            tx.insert_key(key("k2"))
        with first.read() as tx:
            assert {k.key_id for k in tx.list_keys()} == {"k1", "k2"}
    assert integrity(path) == "ok"


# --- file creation and permissions --------------------------------------------------------------


def test_new_database_and_its_wal_and_shm_are_0600_and_umask_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    old = os.umask(0o002)  # a permissive process umask: the store must not rely on it
    try:
        with SqliteStore(path) as store:
            with store.transaction() as tx:
                tx.insert_key(key("k"))
            for suffix in ("", "-wal", "-shm"):
                assert Path(f"{path}{suffix}").stat().st_mode & 0o777 == 0o600, suffix
        assert os.umask(0o002) == 0o002  # restored after the creating connection
    finally:
        os.umask(old)


def test_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SqliteStore(path).close()
    os.chmod(path, 0o640)  # the owner chose a group-readable file: the owner's decision
    SqliteStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_hard_linked_database_is_refused(tmp_path: Path) -> None:
    """Hazard 2.5: SQLite names the WAL after the path, so two names are two WALs for one file."""
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    os.link(path, tmp_path / "alias.db")
    for name in (path, tmp_path / "alias.db"):
        with pytest.raises(StorageError, match="hard links"):
            SqliteStore(name)


# --- hazard 2.4: a database deleted, renamed or replaced under open connections -----------------


@pytest.mark.parametrize("how", ["rename", "delete", "replace"])
def test_writes_refuse_a_database_moved_under_the_store(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        with store.transaction() as tx:
            tx.insert_key(key("before"))
        if how == "rename":
            path.rename(tmp_path / "elsewhere.db")
        elif how == "delete":
            path.unlink()
        else:  # an operator "restores" another file over the live one
            SqliteStore(tmp_path / "other.db").close()
            (tmp_path / "other.db").replace(path)
        with pytest.raises(StorageError, match="deleted, renamed or replaced"), store.transaction():
            pass
        if how == "replace":
            return
        # A new thread's connection does not quietly create an empty database either.
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                with store.read() as tx:
                    tx.list_keys()
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(60)
        assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
        assert not path.exists()


# --- hazard 3.2 / journal settings: every connection FULL and WAL, whoever else connects -------


def test_every_connection_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        seen: list[tuple[str, int]] = []

        def look() -> None:
            conn = store._connection()  # this thread's own connection
            seen.append(
                (
                    conn.execute("PRAGMA journal_mode").fetchone()[0],
                    conn.execute("PRAGMA synchronous").fetchone()[0],
                )
            )

        look()
        worker = threading.Thread(target=look)
        worker.start()
        worker.join(60)
        assert seen == [("wal", 2), ("wal", 2)]
        # A careless sqlite3 session cannot take the file out of WAL under an open store ...
        # (in another process: a failed statement can keep a closed connection alive here)
        python(
            """
            import sqlite3, sys
            outsider = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0.1)
            try:
                outsider.execute("PRAGMA journal_mode = DELETE")
                raise SystemExit("switched out of WAL under an open store")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc), exc
            """,
            path,
        )
        with store.transaction() as tx:
            tx.insert_key(key("k"))
        worker = threading.Thread(target=look)  # a thread that ends while the store is open
        worker.start()
        worker.join()
    # ... and when it does so while no store is open, the next store puts WAL back.
    outsider = sqlite3.connect(path, isolation_level=None)
    assert outsider.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    outsider.close()
    SqliteStore(path).close()
    outsider = sqlite3.connect(path)
    assert outsider.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    outsider.close()


# --- hazard 2.6: connections carried across fork() ----------------------------------------------

KILLED_AFTER_COMMIT = """
import os, signal, sys
from pathlib import Path
from stellakeys.storage.sqlite import SqliteStore
from storage_conformance import key
store = SqliteStore(Path(sys.argv[1]))
with store.transaction() as tx:
    tx.insert_key(key("committed"))
os.kill(os.getpid(), signal.SIGKILL)
"""

FORKED_CHILD = """
    import gc, os, signal, subprocess, sys, threading
    from pathlib import Path
    from stellakeys.storage.sqlite import SqliteStore
    from storage_conformance import key

    path, killed_writer, ending = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    gc.disable()  # garbage stays where fork() will copy it
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.insert_key(key("before-fork"))

    def request():  # a thread that used the store and ended, as a server's threads do
        with store.read() as tx:
            tx.list_keys()

    worker = threading.Thread(target=request)
    worker.start()
    worker.join()
    if ending == "gc":
        store.close()  # closed, but the ended thread's connection must be closed too
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child never uses the inherited store.
        os.close(w)
        os.read(r, 1)
        if ending == "exit":
            sys.exit(0)  # interpreter shutdown finalises every object the child inherited
        gc.collect()  # the child's garbage collector finalises the inherited garbage
        os._exit(0)
    os.close(r)
    store.close()
    del store
    gc.collect()
    # Another process commits and is killed before any checkpoint: its commit lives in the WAL.
    killed = subprocess.run([sys.executable, "-c", killed_writer, str(path)])
    assert killed.returncode == -signal.SIGKILL, killed
    os.write(w, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
"""


@pytest.mark.parametrize("ending", ["exit", "gc"])
def test_forked_child_never_closes_inherited_connections(tmp_path: Path, ending: str) -> None:
    """sqlite3_close() on a connection inherited through fork() believes it is the last
    connection once nobody else holds a lock, and deletes "its" WAL: by then the file of
    another process, holding that process's committed transaction. Before the fix the child
    did exactly that when its interpreter shut down ("exit"), or when its garbage collector
    freed the connection of a thread that had ended in the parent ("gc"), and the commit was
    lost."""
    path = tmp_path / "s.db"
    python(FORKED_CHILD, path, KILLED_AFTER_COMMIT, ending)
    with SqliteStore(path) as store, store.read() as tx:
        assert {k.key_id for k in tx.list_keys()} == {"before-fork", "committed"}
    assert integrity(path) == "ok"


def test_fork_process_pool_beside_an_open_store(tmp_path: Path) -> None:
    """`stellaops verify --batch --workers N` forks its pool while the CLI's own KeyManager
    has connections open (here in two threads). The workers open their own stores; the
    inherited ones are neither used nor closed, so the parent's store keeps its locks (its WAL
    survives the workers' exits) and goes on working."""
    home = tmp_path / "home"
    python(
        """
        import multiprocessing, sys, threading
        from concurrent.futures import ProcessPoolExecutor
        from pathlib import Path
        from stellakeys import KeyManager
        from stellakeys.batch import ManagerSpec, verify_many
        from stellakeys.verification import VerificationPolicy

        home = Path(sys.argv[1])
        wal = home / "stellakeys.db-wal"
        with KeyManager.open(home) as km:
            km.generate_key("k")
            digests = [km.sign(b"p%d" % i, "k", "text/plain") for i in range(40)]
            reader = threading.Thread(target=km.verify_audit)  # a second thread's connection
            reader.start()
            reader.join()
            pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
            with pool:
                outcomes = verify_many(
                    digests, pool, manager_factory=ManagerSpec(home=str(home)),
                    policy=VerificationPolicy(require_anchor=False), chunk_size=5,
                )
            assert [o.ok for o in outcomes] == [True] * 40, outcomes
            assert wal.exists()  # no worker ran "last connection" clean-up under us
            km.sign(b"after", "k", "text/plain")
            chain = km.verify_audit()
            assert chain.ok and chain.count == 1 + 41, chain
        """,
        home,
        env=child_env(home),
    )
    assert integrity(home / DB_FILENAME) == "ok"

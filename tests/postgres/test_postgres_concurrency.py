"""PostgreSQL under many writers in separate processes, and connections that die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from storage_conformance import audit_record, key

from stellakeys.audit import verify_chain
from stellakeys.errors import StorageError
from stellakeys.storage.postgres import PostgresStore

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
CEREMONY_TESTS = TESTS / "ceremony"


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def backends(url: str, state: str) -> list[int]:
    """Our store's server processes in ``state`` (pg_stat_activity), other than this query's."""
    return [
        r[0]
        for r in sql(
            url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'stellakeys' AND state = %s AND pid <> pg_backend_pid()",
            (state,),
        )
    ]


def terminate(url: str, pids: list[int]) -> None:
    for pid in pids:
        sql(url, "SELECT pg_terminate_backend(%s, 10000)", (pid,))


@pytest.fixture
def store(clean_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore.connect(clean_url)
    yield s
    s.close()


class Children:
    """Python subprocesses running a snippet, released together through a "go" file so they
    really contend (interpreter start-up takes longer than their work)."""

    def __init__(self, tmp_path: Path) -> None:
        self.go = tmp_path / "go"
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, code: str, *args: str) -> subprocess.Popen[str]:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), str(CEREMONY_TESTS)])
        )
        prelude = textwrap.dedent(
            """
            import os, sys, time
            from datetime import UTC, datetime
            from stellakeys.audit import AuditRecord
            from stellakeys.keys import KeyRecord
            from stellakeys.storage.postgres import PostgresStore

            # Not storage_conformance's helpers: importing hypothesis and pytest in 16
            # interpreters would cost more than the test itself.
            T0 = datetime(2024, 1, 15, tzinfo=UTC)

            def key(key_id):
                return KeyRecord(key_id, "ed25519", "PEM", "SHA256:" + "ab" * 32, T0)

            def audit_record(**fields):
                return AuditRecord("KEY_GENERATED", fields.pop("actor", "alice"), T0, **fields)

            def wait_for_go(go):
                print("ready", flush=True)
                while not os.path.exists(go):
                    time.sleep(0.002)
            """
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", prelude + textwrap.dedent(code), str(self.go), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def release(self) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr
        self.go.touch()

    def wait(self) -> list[str]:
        """Every child's stdout (after "ready"); each must exit 0."""
        outs = []
        for proc in self.procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            outs.append(out)
        return outs


def test_sixteen_processes_append_one_chain(clean_url: str, tmp_path: Path) -> None:
    """16 processes, each 15 transactions that append an audit event and then insert a key:
    one hash chain, seq 1..240 without gaps, every key and event there."""
    n, per = 16, 15
    children = Children(tmp_path)
    for i in range(n):
        children.spawn(
            """
            go, url, me, per = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
            store = PostgresStore.connect(url)
            wait_for_go(go)
            for i in range(per):
                with store.transaction() as tx:
                    # Audit first: the head must be read under the lock, not before it.
                    tx.append_audit(audit_record(actor=me, key_id=f"{me}-{i}", details={"i": i}))
                    tx.insert_key(key(f"{me}-{i}"))
            store.close()
            """,
            clean_url,
            f"p{i}",
            str(per),
        )
    children.release()
    children.wait()
    with PostgresStore.connect(clean_url) as store, store.read() as tx:
        events = list(tx.iter_audit())
        keys = {k.key_id for k in tx.list_keys()}
    assert [e.seq for e in events] == list(range(1, n * per + 1))
    check = verify_chain(events)
    assert check.ok and check.count == n * per
    assert keys == {f"p{i}-{j}" for i in range(n) for j in range(per)}
    for i in range(n):  # each process's events in its own order
        assert [e.details["i"] for e in events if e.actor == f"p{i}"] == list(range(per))


def test_connection_killed_mid_transaction(store: PostgresStore, clean_url: str) -> None:
    """pg_terminate_backend while a write transaction is open: that transaction fails with a
    StorageError, none of its rows exist, and the pool recovers."""
    with store.transaction() as tx:
        tx.insert_key(key("before"))
        tx.append_audit(audit_record(key_id="before"))
    inside, killed = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def writer() -> None:
        try:
            with store.transaction() as tx:
                tx.insert_key(key("lost-1"))
                tx.append_audit(audit_record(key_id="lost-1"))
                inside.set()
                killed.wait(30)
                tx.insert_key(key("lost-2"))  # the connection is gone
                tx.append_audit(audit_record(key_id="lost-2"))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(30)
    victims = backends(clean_url, "idle in transaction")
    assert len(victims) == 1
    terminate(clean_url, victims)
    killed.set()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], StorageError), outcome
    assert "connection" in str(outcome[0]) or "terminat" in str(outcome[0])
    # Nothing of the killed transaction, and the write lock was released with it.
    with store.read() as tx:
        assert [k.key_id for k in tx.list_keys()] == ["before"]
        assert verify_chain(tx.iter_audit()).count == 1
    with store.transaction() as tx:
        tx.insert_key(key("after"))
        assert tx.append_audit(audit_record(key_id="after")).seq == 2
    with store.read() as tx:
        assert {k.key_id for k in tx.list_keys()} == {"before", "after"}


def test_idle_pooled_connections_killed(store: PostgresStore, clean_url: str) -> None:
    """Connections that died while idle in the pool (a server restart, an administrator) are
    replaced at the next transaction, without the caller seeing an error."""
    barrier = threading.Barrier(4)

    def use() -> None:  # fill the pool with several connections
        with store.read() as tx:
            barrier.wait(30)
            tx.list_keys()

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    token = store.change_token()
    idle = backends(clean_url, "idle")
    assert len(idle) >= 5  # four pooled and the change-token connection
    terminate(clean_url, idle)
    for i in range(6):  # more than the pool held: every dead one is met and replaced
        with store.transaction() as tx:
            tx.insert_key(key(f"k{i}"))
    assert store.change_token() != token
    with store.read() as tx:
        assert len(tx.list_keys()) == 6


def test_client_process_killed_mid_transaction(
    store: PostgresStore, clean_url: str, tmp_path: Path
) -> None:
    """A writer process SIGKILLed while holding the write lock: the server rolls its
    transaction back when the socket closes, and the next writer gets the lock."""
    children = Children(tmp_path)
    child = children.spawn(
        """
        go, url = sys.argv[1], sys.argv[2]
        store = PostgresStore.connect(url)
        wait_for_go(go)
        with store.transaction() as tx:
            tx.insert_key(key("half"))
            tx.append_audit(audit_record(key_id="half"))
            print("inside", flush=True)
            time.sleep(120)
        """,
        clean_url,
    )
    children.release()
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "inside"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    started = time.monotonic()
    with store.transaction() as tx:
        tx.insert_key(key("next"))
        assert tx.append_audit(audit_record(key_id="next")).seq == 1
    assert time.monotonic() - started < 10
    with store.read() as tx:
        assert [k.key_id for k in tx.list_keys()] == ["next"]


def test_lock_timeout(clean_url: str) -> None:
    holder = PostgresStore.connect(clean_url)
    impatient = PostgresStore.connect(clean_url, lock_timeout=0.2)
    try:
        with holder.transaction() as tx:
            tx.insert_key(key("k1"))
            with pytest.raises(StorageError, match="write lock"):
                run_in_thread(lambda: impatient.transaction().__enter__())
        with impatient.transaction() as tx:  # and it works once the lock is free
            tx.insert_key(key("k2"))
    finally:
        holder.close()
        impatient.close()


def run_in_thread(fn: Any) -> Any:
    """Run ``fn`` in another thread (this one has a transaction open) and re-raise."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(("ok", fn()))
        except BaseException as exc:
            result.append(("error", exc))

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


CEREMONY_WORKER = """
import json
from stellakeys.ceremony.errors import CeremonyStateError
from stellakeys.ceremony.model import CeremonyState, Decision
from stellakeys.ceremony.service import CeremonyService
from stellakeys.crypto import load_private_key_pem
from stellakeys.errors import StellaKeysError
from stellakeys.manager import KeyManager

go, home, who, role, key_file = sys.argv[1:6]
manager = KeyManager.open(home, actor=who)  # PostgreSQL via STELLAKEYS_DATABASE_URL
service = CeremonyService.from_settings(manager, manager.settings)
[ceremony] = service.list()
cid = ceremony.ceremony_id
if role == "approve":
    key = load_private_key_pem(open(key_file, "rb").read(), b"pg-worker")
    envelope = service.statement(cid, who, Decision.APPROVE, f"ok from {who}").sign(key)
wait_for_go(go)
if role == "approve":
    try:
        service.approve(service.actor(who), cid, envelope)
        outcome = "ok"
    except StellaKeysError as exc:
        outcome = type(exc).__name__ + ": " + str(exc)
else:
    # Keep trying until somebody has executed it: executors race the approvals too.
    outcome = "timeout"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            service.execute(service.actor(who), cid)
            outcome = "ok"
            break
        except CeremonyStateError:
            if service.get(cid).state is CeremonyState.EXECUTED:
                outcome = "already-executed"
                break
            time.sleep(0.01)
print("RESULT " + json.dumps([role, who, outcome]), flush=True)
manager.close()
"""


def test_sixteen_processes_on_one_ceremony(
    clean_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixteen separate processes on one PostgreSQL ceremony, released together: eight
    approvals (the five custodians, three of them twice) and eight executors that retry until
    it is executed. The threshold (3) is reached once, exactly three approvals count, the
    operation runs exactly once and the audit chain is one valid line."""
    import json

    import yaml

    monkeypatch.syspath_prepend(str(CEREMONY_TESTS))  # the ceremony tests' helpers
    from ceremony_support import CUSTODIANS, INITIATOR, approvers_document

    from stellakeys.audit import AuditQuery, EventType
    from stellakeys.ceremony.model import CeremonyState
    from stellakeys.ceremony.service import CeremonyService
    from stellakeys.crypto import get_algorithm
    from stellakeys.manager import KeyManager

    monkeypatch.setenv("STELLAKEYS_DATABASE_URL", clean_url)
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "pg-ceremony-passphrase")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("STELLAKEYS_HOME", str(home))
    keys = {who: get_algorithm("ed25519").generate() for who in CUSTODIANS}
    key_files = {}
    for who, k in keys.items():
        key_files[who] = tmp_path / f"{who}.pem"
        key_files[who].write_bytes(k.to_encrypted_pem(b"pg-worker"))
    (home / "signer.yaml").write_text(
        yaml.safe_dump(
            {
                "signer": {
                    "profiles": {
                        "default": {"algorithm": "ed25519", "keyStore": "software://default"}
                    }
                },
                "ceremonies": {"enabled": True},
                **approvers_document({w: k.public_key() for w, k in keys.items()}),
            }
        )
    )
    with KeyManager.open(home, actor=INITIATOR) as manager:
        assert isinstance(manager.store, PostgresStore)
        assert manager.settings is not None
        service = CeremonyService.from_settings(manager, manager.settings)
        c = service.create(INITIATOR, "key-rotation", "Root key", {"keyId": "root-pg"}, threshold=3)

    children = Children(tmp_path)
    approvers = [*CUSTODIANS, *CUSTODIANS[:3]]
    for who in approvers:
        children.spawn(CEREMONY_WORKER, str(home), who, "approve", str(key_files[who]))
    for i in range(8):
        children.spawn(CEREMONY_WORKER, str(home), f"operator-{i}@company.com", "execute", "-")
    children.release()
    results = [
        json.loads(line.removeprefix("RESULT "))
        for out in children.wait()
        for line in out.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(results) == 16
    approved = [r for r in results if r[0] == "approve" and r[2] == "ok"]
    executed = [r for r in results if r[0] == "execute" and r[2] == "ok"]
    assert len(approved) == 3, results
    assert len({r[1] for r in approved}) == 3
    assert len(executed) == 1, results
    assert all(r[2] == "already-executed" for r in results if r[0] == "execute" and r[2] != "ok")

    with KeyManager.open(home, actor=INITIATOR) as manager:
        service = CeremonyService.from_settings(manager, manager.settings)  # type: ignore[arg-type]
        final = service.get(c.ceremony_id)
        assert final.state is CeremonyState.EXECUTED and final.current_approvals == 3
        kinds = [e.event_type for e in manager.audit_events(AuditQuery(ceremony_id=c.ceremony_id))]
        assert kinds.count(EventType.CEREMONY_THRESHOLD_REACHED) == 1
        assert kinds.count(EventType.CEREMONY_EXECUTED) == 1
        assert kinds.count(EventType.CEREMONY_APPROVED) == 3
        assert [k.key_id for k in manager.list_keys()] == ["root-pg"]
        assert len(manager.audit_events(AuditQuery(event_type="KEY_GENERATED"))) == 1
        check = manager.verify_audit()
        assert check.ok
        events = manager.audit_events()
        assert [e.seq for e in events] == list(range(1, len(events) + 1))

"""Many threads and several processes approving and executing one ceremony: the threshold is
reached once, the operation runs once, one key is generated."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ceremony_support import (
    CUSTODIANS,
    INITIATOR,
    WORKER_PASSPHRASE,
    World,
    approvers_document,
    make_world,
    process_worker,
)

from stellakeys.audit import AuditQuery, EventType
from stellakeys.ceremony.errors import ApprovalRejectedError, CeremonyExecutedError
from stellakeys.ceremony.model import CeremonyState
from stellakeys.crypto import get_algorithm
from stellakeys.manager import KeyManager
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore

pytestmark = pytest.mark.slow


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # collected and asserted on by the caller
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    store: Any = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "c.db")
    return make_world(store, tmp_path)


def test_threads_race_for_the_threshold_and_the_execution(world: World) -> None:
    c = world.create(threshold=3, required_approvers=5)
    # Every custodian approves twice at once (ten threads for five approvers, threshold 3);
    # statements are signed up front so the race is only over the database.
    envelopes = [world.sign(c.ceremony_id, who) for who in CUSTODIANS for _ in range(2)]
    approvers = [who for who in CUSTODIANS for _ in range(2)]
    outcomes = run_threads(
        len(envelopes),
        lambda i: world.service.approve(world.actor(approvers[i]), c.ceremony_id, envelopes[i]),
    )
    accepted = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if isinstance(o, ApprovalRejectedError)]
    assert len(accepted) == 3 and len(refused) == 7, outcomes
    assert {o.code for o in refused} <= {"not-open", "already-approved"}
    stored = world.service.get(c.ceremony_id)
    assert stored.state is CeremonyState.APPROVED and stored.current_approvals == 3
    assert len({a.approver for a in stored.approvals}) == 3
    assert len(world.events(EventType.CEREMONY_THRESHOLD_REACHED)) == 1
    assert len(world.events(EventType.CEREMONY_APPROVED)) == 3
    assert len(world.events(EventType.CEREMONY_APPROVAL_REJECTED)) == 7

    executions = run_threads(
        12, lambda i: world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    )
    done = [e for e in executions if not isinstance(e, Exception)]
    failed = [e for e in executions if isinstance(e, Exception)]
    assert len(done) == 1, executions
    # Every loser is told the ceremony was executed, never the key store's symptom of it.
    odd = [f"{type(e).__name__}: {e}" for e in failed if not isinstance(e, CeremonyExecutedError)]
    assert not odd, odd
    assert len(world.events(EventType.CEREMONY_EXECUTED)) == 1
    assert [k.key_id for k in world.manager.list_keys()] == [c.payload["keyId"]]
    assert len(world.manager.audit_events(AuditQuery(event_type="KEY_GENERATED"))) == 1
    assert world.service.get(c.ceremony_id).result == done[0].result
    assert world.manager.verify_audit().ok


def _home(tmp_path: Path, keys: dict[str, Any]) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "signer.yaml").write_text(
        yaml.safe_dump(
            {
                "signer": {
                    "profiles": {
                        "default": {"algorithm": "ed25519", "keyStore": "software://default"}
                    }
                },
                "ceremonies": {"enabled": True},
                **approvers_document({k: v.public_key() for k, v in keys.items()}),
            }
        )
    )
    return home


def test_processes_race_on_one_sqlite_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "process-test-passphrase")
    monkeypatch.setenv("STELLAKEYS_HOME", str(tmp_path / "home"))
    keys = {who: get_algorithm("ed25519").generate() for who in CUSTODIANS}
    home = _home(tmp_path, keys)
    with KeyManager.open(home, actor=INITIATOR) as manager:
        from stellakeys.ceremony.service import CeremonyService

        assert manager.settings is not None
        service = CeremonyService.from_settings(manager, manager.settings)
        c = service.create(INITIATOR, "key-rotation", "Root key", {"keyId": "root-mp"}, threshold=3)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()

    def race(jobs: list[tuple[str, str, bytes | None]]) -> list[tuple[str, str, str]]:
        barrier = ctx.Barrier(len(jobs))
        procs = [
            ctx.Process(target=process_worker, args=(str(home), a, w, k, barrier, results))
            for a, w, k in jobs
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
            assert p.exitcode == 0
        return [results.get(timeout=10) for _ in jobs]

    approvals = race(
        [("approve", who, keys[who].to_encrypted_pem(WORKER_PASSPHRASE)) for who in CUSTODIANS]
    )
    outcomes = Counter(r[2] == "ok" for r in approvals)
    assert outcomes == Counter({True: 3, False: 2}), approvals
    executions = race([("execute", f"operator-{i}@company.com", None) for i in range(4)])
    assert sum(r[2] == "ok" for r in executions) == 1, executions
    losers = [r[2] for r in executions if r[2] != "ok"]
    assert all(r.startswith("CeremonyExecutedError: ") for r in losers), executions

    with KeyManager.open(home, actor=INITIATOR) as manager:
        events = manager.audit_events(AuditQuery(ceremony_id=c.ceremony_id))
        kinds = Counter(e.event_type for e in events)
        assert kinds[EventType.CEREMONY_THRESHOLD_REACHED] == 1
        assert kinds[EventType.CEREMONY_EXECUTED] == 1
        assert kinds[EventType.CEREMONY_APPROVED] == 3
        assert [k.key_id for k in manager.list_keys()] == ["root-mp"]
        assert len(manager.audit_events(AuditQuery(event_type="KEY_GENERATED"))) == 1
        assert manager.verify_audit().ok

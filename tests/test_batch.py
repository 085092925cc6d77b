"""Batch verification on any Executor: in process, a process pool, a Dask LocalCluster
(real worker processes), and ``stellaops verify --batch`` with progress and summary."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stellakeys import FrozenClock, KeyManager, Statement, Subject
from stellakeys.batch import (
    BatchItem,
    ManagerSpec,
    reason_category,
    summarize,
    verify_many,
)
from stellakeys.dsse import Envelope
from stellakeys.storage.memory import MemoryStore

T0 = datetime(2024, 1, 15, tzinfo=UTC)
NOW = datetime(2025, 3, 1, tzinfo=UTC)
EVIDENCE = "evidence.stella/v1"
PASSPHRASE = "batch-test-passphrase"


def statement(purl: str, predicate_type: str = EVIDENCE) -> bytes:
    return Statement((Subject(purl, {"sha256": "ab" * 32}),), predicate_type, {}).to_json()


class Corpus:
    """A home with one anchor, 30 good proofs and one of each kind of failure."""

    def __init__(self, home: Path) -> None:
        self.home = home
        clock = FrozenClock(T0)
        km = KeyManager.open(home, clock=clock, actor="tester")
        km.generate_key("key-2024")
        km.generate_key("key-2025")
        anchor = km.create_anchor("pkg:npm/*", ["key-2024"], [EVIDENCE])
        clock.set(T0 + timedelta(days=1))
        self.good = [km.sign(statement(f"pkg:npm/p{i}@1"), "key-2024") for i in range(30)]
        km.add_key(anchor.anchor_id, "key-2025")
        clock.set(T0 + timedelta(days=10))
        revoked_later = km.sign(statement("pkg:npm/late@1"), "key-2025")
        km.revoke_key(anchor.anchor_id, "key-2025", "compromise")
        no_anchor = km.sign(statement("pkg:maven/x/y@1"), "key-2024")
        wrong_type = km.sign(statement("pkg:npm/q@1", "other/v1"), "key-2024")
        tampered = Envelope.from_json(km.get_proof(self.good[0]).to_json())
        tampered = Envelope(tampered.payload_type, statement("pkg:npm/evil@1"), tampered.signatures)
        km.close()
        self.bad: dict[str, bytes | str] = {
            "compromised key": revoked_later,
            "no trust anchor": no_anchor,
            "predicate type not allowed": wrong_type,
            "no valid signature": tampered.to_json(),
            "malformed input": b'{"payloadType": "x"}',
        }
        self.settings_home = home

    def items(self) -> list[BatchItem]:
        out = [BatchItem(d, label=f"good-{i}") for i, d in enumerate(self.good)]
        # Failures in the middle, so order and indexes are checked.
        out[7:7] = [BatchItem(p, label=name) for name, p in self.bad.items()]
        return out

    def manager(self) -> KeyManager:
        return KeyManager.open(self.home, clock=FrozenClock(NOW))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    mp = pytest.MonkeyPatch()
    mp.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    home = tmp_path_factory.mktemp("batch") / "home"
    yield Corpus(home)
    mp.undo()


def check(outcomes: list[Any], corpus: Corpus) -> None:
    items = corpus.items()
    assert [o.index for o in outcomes] == list(range(len(items)))
    assert [o.label for o in outcomes] == [i.label for i in items]
    for outcome in outcomes:
        expected = outcome.label.startswith("good")
        assert outcome.ok is expected, (outcome.label, outcome.result, outcome.error)
        if not expected:
            assert outcome.category == outcome.label
    summary = summarize(outcomes)
    assert (summary.total, summary.ok, summary.failed) == (len(items), 30, 5)
    assert dict(summary.by_reason) == dict.fromkeys(corpus.bad, 1)


def test_in_process(corpus: Corpus) -> None:
    with corpus.manager() as km:
        seen: list[int] = []
        outcomes = verify_many(corpus.items(), manager=km, chunk_size=4, progress=seen.append)
        check(outcomes, corpus)
        assert sum(seen) == len(outcomes)
        # The batch's "now" is the manager's clock, and the clock is given back untouched.
        assert {o.result.time for o in outcomes if o.result} == {NOW}
        assert isinstance(km.clock, FrozenClock) and km.clock.now() == NOW


def test_process_pool(corpus: Corpus) -> None:
    with corpus.manager() as km, ProcessPoolExecutor(2) as pool:
        outcomes = verify_many(corpus.items(), pool, manager=km, chunk_size=3)
        worker_pids = set(pool._processes)  # type: ignore[attr-defined]
    check(outcomes, corpus)
    assert {o.result.time_source.value for o in outcomes if o.result} == {"now"}
    assert {o.result.time for o in outcomes if o.result} == {NOW}
    assert os.getpid() not in worker_pids


def test_thread_pool_and_explicit_factory(corpus: Corpus) -> None:
    spec = ManagerSpec(home=str(corpus.home))
    with ThreadPoolExecutor(3) as pool:
        outcomes = verify_many(corpus.items(), pool, manager_factory=spec, now=NOW)
    check(outcomes, corpus)


def test_asserted_time_and_stored_addresses(corpus: Corpus) -> None:
    with corpus.manager() as km:
        before = [BatchItem(d, at=T0) for d in corpus.good[:3]]  # before signing: fails
        outcomes = verify_many(before, manager=km)
    assert [o.ok for o in outcomes] == [True, True, True]  # key valid from T0 on
    assert {o.result.time_source.value for o in outcomes if o.result} == {"asserted"}
    with corpus.manager() as km:
        early = verify_many([BatchItem(corpus.good[0], at=T0 - timedelta(days=1))], manager=km)
    assert early[0].category == "key not yet valid"


def test_what_crosses_a_process_boundary(corpus: Corpus) -> None:
    with corpus.manager() as km:
        spec = ManagerSpec.of(km)
        assert pickle.loads(pickle.dumps(spec)) == spec
        with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
            pickle.dumps(km)
    memory = KeyManager(MemoryStore())
    with pytest.raises(ValueError, match="manager_factory"):
        ManagerSpec.of(memory)
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="manager_factory"):
        verify_many([b"{}"], pool, manager=memory)


@pytest.fixture(scope="module")
def dask_client(corpus: Corpus) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    # Real worker processes; the env (passphrase, etc.) is inherited.
    with (
        LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_dask_local_cluster(corpus: Corpus, dask_client: Any) -> None:
    with corpus.manager() as km:
        outcomes = verify_many(corpus.items(), dask_client.get_executor(), manager=km, chunk_size=5)
    check(outcomes, corpus)
    # The work ran in the cluster's worker processes, each opening its own manager once.
    pids = dask_client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()


def test_reason_categories() -> None:
    assert reason_category("key k was added at 2024-01-01T00:00:00Z, after T") == (
        "key not yet valid"
    )
    assert reason_category(
        "key k was revoked at 2024-01-01T00:00:00Z (rotation), at or before T"
    ) == ("key revoked")
    assert reason_category("something new") == "other"


# --- CLI ---------------------------------------------------------------------------------------


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STELLAKEYS_HOME": str(home), "STELLAKEYS_PASSPHRASE": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "verify", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def write_inputs(corpus: Corpus, tmp_path: Path) -> tuple[Path, Path]:
    jsonl = tmp_path / "proofs.jsonl"
    with corpus.manager() as km:
        lines = [json.dumps({"proof": d}) for d in corpus.good[:5]]
        lines.append(km.get_proof(corpus.good[5]).to_json().decode())  # an envelope line
        lines.append(json.dumps({"proof": corpus.bad["no trust anchor"]}))
        lines.append(
            json.dumps({"proof": corpus.good[6], "atTime": "2024-01-01T00:00:00Z"})
        )  # before the key
        directory = tmp_path / "envelopes"
        (directory / "sub").mkdir(parents=True)
        for i, d in enumerate(corpus.good[:4]):
            (directory / ("sub" if i % 2 else "") / f"p{i}.json").write_bytes(
                km.get_proof(d).to_json()
            )
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl, directory


def test_cli_batch(corpus: Corpus, tmp_path: Path) -> None:
    jsonl, directory = write_inputs(corpus, tmp_path)
    proc = run_cli(corpus.home, "--batch", str(directory))
    assert proc.returncode == 0, proc.stderr
    assert "Batch verification: 4 proofs" in proc.stdout
    assert "ok" in proc.stdout and "failed" in proc.stdout

    proc = run_cli(corpus.home, "--batch", str(jsonl), "--workers", "2")
    assert proc.returncode == 1
    assert "no trust anchor" in proc.stdout and "key not yet valid" in proc.stdout
    assert f"FAILED {jsonl}:7" in proc.stdout

    proc = run_cli(corpus.home, "--batch", str(jsonl), "--json")
    assert proc.returncode == 1
    *rows, last = [json.loads(line) for line in proc.stdout.splitlines()]
    assert last == {
        "summary": {
            "total": 8,
            "ok": 6,
            "failed": 2,
            "byReason": {"key not yet valid": 1, "no trust anchor": 1},
        }
    }
    assert [r["ok"] for r in rows] == [True] * 6 + [False, False]
    assert [r["input"] for r in rows] == [f"{jsonl}:{n}" for n in range(1, 9)]
    assert rows[7]["timeSource"] == "asserted"
    assert "Batch verification: 8 proofs" in proc.stderr  # the summary keeps stdout JSON

    proc = run_cli(corpus.home, "--batch", str(jsonl), "--proof-bundle", corpus.good[0])
    assert proc.returncode == 2 and "--batch takes its proofs" in proc.stderr


# --- reading JSON Lines: one parser for verify_many and the stream ------------------------------

_ADDRESS = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", 'not JSON (each line is one DSSE envelope or a {"proof": ...} object)'),
        (b"[1]", "expected a JSON object"),
        (b'{"foo": 1}', "expected an envelope, or an object with 'envelope' or 'proof'"),
        (b'{"proof": "%s", "purl": 5}' % _ADDRESS.encode(), "'purl' must be a string"),
        (b'{"proof": "%s", "purl": ["pkg:npm/a@1"]}' % _ADDRESS.encode(), "'purl' must be"),
        (b'{"proof": "%s", "proof": "x"}' % _ADDRESS.encode(), "duplicate member 'proof'"),
        (b'{"proof": "%s", "atTime": "yesterday"}' % _ADDRESS.encode(), "yesterday"),
        (b'{"envelope": {"payloadType": "x"}}', "payload"),
        (b'{"payloadType": "x", "payload": "!!", "signatures": []}', "base64"),
    ],
)
def test_read_items_reports_what_the_stream_reports(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    """``read_items`` and ``stellaops verify --batch`` (batch_stream) share one line parser:
    a line is malformed in both or in neither, for the same reason (a non-string purl used to
    pass read_items and fail only at verification)."""
    from stellakeys.batch import read_items
    from stellakeys.batch_stream import ItemReport, StreamOptions, _parse_raw
    from stellakeys.errors import MalformedEnvelopeError

    good = Envelope.from_json(b'{"payload":"eA==","payloadType":"text/plain","signatures":[]}')
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_bytes(good.to_json() + b"\n" + line + b"\n")
    malformed: list[tuple[int, str, str]] = []
    items = read_items(jsonl, malformed)
    assert [i.proof for i in items] == [good]
    ((position, label, said),) = malformed
    assert (position, label) == (1, f"{jsonl}:2") and reason in said, said
    with pytest.raises(MalformedEnvelopeError, match=f"^{jsonl}:2: "):
        read_items(jsonl)
    report = _parse_raw((1, label, line), StreamOptions(now=T0))
    assert isinstance(report, ItemReport) and not report.ok, report
    assert reason in (report.why or ""), report

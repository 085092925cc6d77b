"""Issue 20 item 2: ``stellaops verify --batch`` streams -- flat memory, bounded back-pressure,
JSON Lines written as items complete (input order), the same outcomes with any worker count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stellakeys import FrozenClock, KeyManager, Statement, Subject
from stellakeys.batch import in_order
from stellakeys.batch_stream import _walk, chunked, read_raw
from stellakeys.dsse import Envelope

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 1, 15, tzinfo=UTC)
NOW = "2025-03-01T00:00:00Z"
PASSPHRASE = "batch-stream-passphrase"
EVIDENCE = "evidence.stella/v1"


def _statement(purl: str, predicate: str = EVIDENCE) -> bytes:
    return Statement((Subject(purl, {"sha256": "cd" * 32}),), predicate, {}).to_json()


class Home:
    """A home with one npm anchor; good proofs and one proof of each kind of failure."""

    def __init__(self, home: Path) -> None:
        self.home = home
        clock = FrozenClock(T0)
        with KeyManager.open(home, clock=clock, actor="tester") as km:
            km.generate_key("k1")
            km.generate_key("k2")
            anchor = km.create_anchor("pkg:npm/*", ["k1"], [EVIDENCE])
            clock.set(T0 + timedelta(days=1))
            self.good = [
                km.get_proof(km.sign(_statement(f"pkg:npm/p{i}@1"), "k1")).to_json()
                for i in range(40)
            ]
            km.add_key(anchor.anchor_id, "k2")
            clock.set(T0 + timedelta(days=10))
            compromised = km.get_proof(km.sign(_statement("pkg:npm/late@1"), "k2")).to_json()
            km.revoke_key(anchor.anchor_id, "k2", "compromise")
            no_anchor = km.get_proof(km.sign(_statement("pkg:maven/x/y@1"), "k1")).to_json()
            wrong_type = km.get_proof(
                km.sign(_statement("pkg:npm/q@1", "other/v1"), "k1")
            ).to_json()
        tampered = Envelope.from_json(self.good[0])
        tampered = Envelope(
            tampered.payload_type, _statement("pkg:npm/evil@1"), tampered.signatures
        )
        #: category -> the line that fails with it
        self.bad: dict[str, bytes] = {
            "compromised key": compromised,
            "no trust anchor": no_anchor,
            "predicate type not allowed": wrong_type,
            "no valid signature": tampered.to_json(),
            "malformed input": b"this is not json",
        }

    def lines(self, n: int) -> Iterator[bytes]:
        """``n`` lines: good proofs, with every kind of failure once in each block of 100."""
        bad = list(self.bad.values())
        for i in range(n):
            block = i % 100
            yield bad[block - 50] if 50 <= block < 50 + len(bad) else self.good[i % len(self.good)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    mp = pytest.MonkeyPatch()
    mp.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    yield Home(tmp_path_factory.mktemp("stream") / "home")
    mp.undo()


def _write(path: Path, lines: Iterator[bytes]) -> Path:
    with path.open("wb") as out:
        for line in lines:
            out.write(line + b"\n")
    return path


def _env(home: Home, **extra: str) -> dict[str, str]:
    """The environment of a ``stellaops verify --batch`` child: this home, the test clock,
    no STELLAKEYS_* variable leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(
        STELLAKEYS_HOME=str(home.home),
        STELLAKEYS_PASSPHRASE=PASSPHRASE,
        STELLAKEYS_TEST_NOW=NOW,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _run(home: Home, *args: str) -> tuple[int, bytes, str]:
    env = _env(home, NO_COLOR="1")
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", *args],
        capture_output=True,
        env=env,
        timeout=600,
    )
    return proc.returncode, proc.stdout, proc.stderr.decode()


def _run_rss(home: Home, *args: str) -> tuple[int, int]:
    """(exit code, peak RSS in KiB) of a batch run, stdout discarded. ``os.wait4`` gives
    this child's own rusage (its peak, and its workers' once it reaped them), which
    RUSAGE_CHILDREN of this long-lived test process would mix with every earlier child's."""
    env = _env(home)
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", *args],
            stdout=null,
            stderr=null,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


def test_peak_memory_does_not_grow_with_the_input(home: Home, tmp_path: Path) -> None:
    """5x the items, about the same peak RSS: nothing is kept per item (the old reader
    held every item and every result: about 2 kB an item)."""
    n = 4000
    small = _write(tmp_path / "small.jsonl", home.lines(n))
    large = _write(tmp_path / "large.jsonl", home.lines(5 * n))
    code_small, rss_small = _run_rss(home, str(small), "--json")
    code_large, rss_large = _run_rss(home, str(large), "--json")
    assert code_small == code_large == 1  # the failures in the corpus
    assert rss_large / rss_small < 1.3, (rss_small, rss_large)


def _rows(stdout: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = stdout.decode().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON document
    *rows, last = parsed
    assert set(last) == {"summary"}
    summary: dict[str, Any] = last["summary"]
    return rows, summary


def test_jsonl_is_complete_and_a_bad_line_in_the_middle_loses_nothing(
    home: Home, tmp_path: Path
) -> None:
    lines = list(home.lines(300))
    lines.insert(150, b"")  # a blank line: skipped, but counted in line numbers
    lines.insert(151, b'{"payloadType": "x", "payloadType": "y"}')  # duplicate member
    lines.insert(152, b"[1, 2]")
    path = _write(tmp_path / "items.jsonl", iter(lines))
    code, out, err = _run(home, str(path), "--json")
    assert code == 1 and "Traceback" not in err
    rows, summary = _rows(out)
    assert len(rows) == 302 == summary["total"]
    assert [r["index"] for r in rows] == list(range(302))  # input order
    numbers = [n for n, line in enumerate(lines, start=1) if line]
    assert [r["input"] for r in rows] == [f"{path}:{n}" for n in numbers]
    assert summary["ok"] == sum(r["ok"] for r in rows) and summary["failed"] == 302 - summary["ok"]
    by_input = {r["input"]: r for r in rows}
    assert "duplicate" in by_input[f"{path}:152"]["error"]
    assert by_input[f"{path}:153"]["error"] == "expected a JSON object"
    good = set(home.good)
    assert [r["ok"] for r in rows] == [line in good for line in lines if line]
    # Failures grouped by reason code: each kind once per block of 100 lines, 3 blocks.
    assert summary["byReason"] == {
        "compromised key": 3,
        "no trust anchor": 3,
        "predicate type not allowed": 3,
        "no valid signature": 3,
        "malformed input": 3 + 2,
    }
    compromised = [r for r in rows if r.get("reasonCodes", [None])[:1] == ["key-compromised"]]
    assert len(compromised) == 3
    assert "Batch verification: 302 proofs" in err  # the human summary goes to stderr

    # The same run without --json: the summary table and the FAILED lines on stdout.
    code, out, err = _run(home, str(path))
    text = out.decode()
    assert code == 1 and "Batch verification: 302 proofs" in text
    assert f"FAILED {path}:51:" in text and "and 1 more" not in text  # 17 failures: all shown
    assert "compromised key" in text and "predicate type not allowed" in text


def test_two_workers_give_the_same_lines_as_one(home: Home, tmp_path: Path) -> None:
    path = _write(tmp_path / "items.jsonl", home.lines(700))  # 6 chunks: both workers busy
    code1, out1, _ = _run(home, str(path), "--json")
    code2, out2, err2 = _run(home, str(path), "--json", "--workers", "2")
    assert code1 == code2 == 1, err2
    assert out1 == out2  # the same outcomes, in the same (input) order, at the same "now"
    _, summary = _rows(out2)
    assert summary["total"] == 700 and summary["failed"] == 7 * 5


def test_all_good_exits_zero_and_directory_input_streams(home: Home, tmp_path: Path) -> None:
    directory = tmp_path / "envelopes"
    for name in ("b.json", "a/z.dsse", "a.json", "a/b/c.json", ".hidden.json", "skip.txt"):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(home.good[len(name) % len(home.good)])
    expected = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in (".json", ".dsse") and not p.name.startswith(".")
    )
    assert [Path(p) for p in _walk(directory)] == expected
    code, out, err = _run(home, str(directory), "--json", "--workers", "2")
    assert code == 0, err
    rows, summary = _rows(out)
    assert [r["input"] for r in rows] == [str(p) for p in expected]
    assert summary == {"total": 4, "ok": 4, "failed": 0, "byReason": {}}


def test_the_reader_is_lazy_and_chunks_in_flight_are_bounded(tmp_path: Path) -> None:
    """Back-pressure: the reader is never more than ``max_in_flight`` chunks ahead of what
    the caller has taken, however slow the consumer."""
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"".join(b'\n{"n": %d}\n' % i for i in range(1000)))
    pulled = 0

    def source() -> Iterator[Any]:
        nonlocal pulled
        for chunk in chunked(read_raw(path), size=10):
            pulled += 1
            yield chunk

    taken = 0
    lock = threading.Lock()
    with ThreadPoolExecutor(2) as pool:
        for chunk, result in in_order(pool, lambda c: (len, c.items), source(), max_in_flight=3):
            with lock:
                taken += 1
                assert pulled <= taken + 2, (pulled, taken)
            assert result == len(chunk.items) == 10
            first_label = chunk.items[0][1]
            assert first_label.endswith(f":{(taken - 1) * 20 + 2}")  # blank lines count
    assert taken == pulled == 100
    # The last chunk's offset is the whole file: what the progress bar's ETA is measured in.
    assert list(chunked(read_raw(path), size=1000))[-1].offset == path.stat().st_size


def test_progress_bar_only_on_a_terminal(home: Home, tmp_path: Path) -> None:
    """On a terminal, stderr gets items, items/s and failures so far; elsewhere the bar's
    library is not even imported."""
    import pty

    path = _write(tmp_path / "proofs.jsonl", home.lines(60))
    env = _env(home)
    command = [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", str(path), "--json"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
    assert proc.wait(timeout=300) == 1
    os.close(master)
    text = seen.decode(errors="replace")
    assert "60 items" in text and "/s" in text and "5 failed" in text

    piped = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:]], capture_output=True, env=env
    )
    assert piped.returncode == 1
    log = piped.stderr.decode()
    assert "rich.progress" not in log
    assert "items" not in log and "/s" not in log  # no bar drawn either
    assert "| rich.table" in log  # the import log is there: the check bites


def test_a_worker_killed_mid_batch_is_a_one_line_error_without_a_summary(
    home: Home, tmp_path: Path
) -> None:
    """SIGKILL one worker (what the OOM killer does) while the batch runs: the command must
    not print a traceback, nor a summary of a batch it did not finish, nor exit 0."""
    import signal

    path = _write(tmp_path / "items.jsonl", (home.good[i % 40] for i in range(60_000)))
    env = _env(home, NO_COLOR="1")
    options = ("--json", "--workers", "2")
    with (tmp_path / "stderr").open("w+b") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", str(path), *options],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the workers are verifying once a result is out
            assert first, (tmp_path / "stderr").read_text()[-2000:]
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert children, "the batch runs without worker processes"
            os.kill(int(children[0]), signal.SIGKILL)
            out = first + proc.stdout.read()  # to the end: the command exits
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr.seek(0)
        err = stderr.read().decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert "worker process died" in err and str(path) in err, err
    lines = [json.loads(line) for line in out.splitlines()]  # whole lines only
    assert lines and all("summary" not in line for line in lines), lines[-1]
    assert all(line["ok"] for line in lines)
    assert len(lines) < 60_000

"""Batch verification: warm library verify vs ``stellaops verify --batch`` (1 and 2 workers).

The corpus: N in-toto envelopes for distinct npm PURLs (default 100,000; ``--quick`` 10,000),
signed with one Ed25519 key that the one ``pkg:npm/*`` anchor trusts, written one per line to
a JSON Lines file by a streaming generator (never a list in memory).

Modes, timed alternately in every round (so load from other processes hits all alike):

* **library**: this process, one ``KeyManager.verify(line)`` per line of the file, with a
  manager opened and warmed beforehand -- the cost of verification itself;
* **batch 1 / batch 2**: ``stellaops verify --batch FILE [--workers 2]`` in a subprocess
  (summary output), the whole command: start-up, reading, parsing, verifying, reporting;
* **batch 1 --json**: the same with one JSON line per item written (to /dev/null).

Before every timed pass the store changes (a key is imported), which empties the anchor
cache of every process: each pass sees every PURL for the first time, as a batch of new
artifacts would, whichever mode it is (a fresh CLI process starts cold anyway).

Reported: µs per item, ``library / batch`` per worker (target >= 0.8), the speedup of 2
workers over 1 and the parallel efficiency (speedup / 2; target >= 1.9x, i.e. 0.95), next
to a control (pure-Python CPU work on pools of 1 and 2 processes: what the machine gives two
processes at that moment). "net" figures subtract the start-up of a one-item batch measured
in the same round.

Peak RSS (``ru_maxrss`` of the CLI and its workers, from ``os.wait4``) is measured for the
N-item file and for a file of 10 N items made by repeating it (streamed), so the growth from
N to 10 N items is the batch's own (the library's per-PURL caches are bounded at 65,536
entries and see the same PURLs in both).

Run: ``python benchmarks/bench_batch.py`` (``--quick`` for CI: 10k items, 1M RSS skipped).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stellakeys import FrozenClock, KeyManager, Statement, Subject  # noqa: E402
from stellakeys.crypto import get_algorithm  # noqa: E402
from stellakeys.dsse import sign_envelope  # noqa: E402
from stellakeys.verification import VerificationPolicy  # noqa: E402

PREDICATE = "evidence.stella/v1"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
PASSPHRASE = "bench-batch"


def build(home: Path, path: Path, n: int) -> None:
    """A home with one anchor and a JSON Lines file of ``n`` envelopes, written as signed."""
    key = get_algorithm("ed25519").generate()
    with KeyManager.open(home, clock=FrozenClock(T0), actor="bench") as km:
        km.import_key("bench-key", key.public_key().to_pem())
        km.create_anchor("pkg:npm/*", ["bench-key"], [PREDICATE])
    with path.open("wb") as out:
        for i in range(n):
            payload = Statement(
                (Subject(f"pkg:npm/package-{i}@1.0.{i % 97}", {"sha256": f"{i:064x}"}),),
                PREDICATE,
                {"build": i},
            ).to_json()
            envelope = sign_envelope("application/vnd.in-toto+json", payload, [key], ["bench-key"])
            out.write(envelope.to_json() + b"\n")


def repeat(source: Path, target: Path, times: int) -> None:
    with target.open("wb") as out:
        for _ in range(times):
            with source.open("rb") as handle:
                while block := handle.read(1 << 20):
                    out.write(block)


def bust(km: KeyManager) -> None:
    # A write moves the store's change token: every process drops its anchor cache.
    pem = get_algorithm("ed25519").generate().public_key().to_pem()
    km.import_key(f"cache-buster-{time.monotonic_ns()}", pem)


def library(km: KeyManager, path: Path) -> float:
    policy = VerificationPolicy()
    started = time.perf_counter()
    with path.open("rb") as handle:
        for line in handle:
            if not km.verify(line, now=NOW, policy=policy).ok:
                raise SystemExit("library verify failed: the corpus is wrong")
    return time.perf_counter() - started


def cli(home: Path, path: Path, *extra: str) -> tuple[float, int]:
    """(seconds, peak RSS in KiB of the command and its workers)."""
    env = {
        **os.environ,
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_TEST_NOW": NOW.isoformat().replace("+00:00", "Z"),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", str(path), *extra]
    started = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(command, stdout=null, stderr=subprocess.PIPE, env=env)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return elapsed, usage.ru_maxrss


def control(workers: int, size: int = 40_000, tasks: int = 8) -> float:
    # math.factorial: CPU-bound, and picklable by reference from any module (run_all.py
    # loads this file under another name, so a function of its own would not be).
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(math.factorial, [10] * workers))  # started
        started = time.perf_counter()
        list(pool.map(math.factorial, [size] * tasks))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k items, 2 rounds, no 10x RSS")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-rss", action="store_true", help="skip the 10x-items RSS run")
    args, _ = parser.parse_known_args()  # run_all.py passes its own arguments on
    n = args.items or (10_000 if args.quick else 100_000)
    rounds = args.rounds or (2 if args.quick else 1)
    os.environ["STELLAKEYS_PASSPHRASE"] = PASSPHRASE
    times: dict[str, list[float]] = {
        "library": [],
        "batch 1": [],
        "batch 2": [],
        "batch 1 --json": [],
        "start-up 1": [],
        "start-up 2": [],
    }
    rss: dict[str, int] = {}
    controls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        home, items = Path(tmp) / "home", Path(tmp) / "items.jsonl"
        one = Path(tmp) / "one.jsonl"
        build(home, items, n)
        with items.open("rb") as handle:
            one.write_bytes(handle.readline())
        with KeyManager.open(home) as km:
            library(km, one)  # warm: imports done, store open
            for _ in range(rounds):
                bust(km)
                times["library"].append(library(km, items))
                for mode, extra in (
                    ("batch 1", ()),
                    ("batch 2", ("--workers", "2")),
                    ("batch 1 --json", ("--json",)),
                ):
                    bust(km)
                    elapsed, peak = cli(home, items, *extra)
                    times[mode].append(elapsed)
                    rss[mode] = max(rss.get(mode, 0), peak)
                times["start-up 1"].append(cli(home, one)[0])
                times["start-up 2"].append(cli(home, one, "--workers", "2")[0])
                controls.append(control(1) / control(2))
            if not (args.quick or args.no_rss):
                big = Path(tmp) / "items10.jsonl"
                repeat(items, big, 10)
                bust(km)
                rss["10x, batch 2"] = cli(home, big, "--workers", "2")[1]
                big.unlink()
    load = os.getloadavg()
    print(
        f"batch verification: {n:,} Ed25519 proofs (distinct PURLs), {rounds} round(s);"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )
    med = {mode: statistics.median(values) for mode, values in times.items()}
    lib = med["library"] / n
    print(f"{'mode':<16}{'us/item':>9}{'net us/item':>13}{'library/this':>14}")
    for mode in ("library", "batch 1", "batch 1 --json", "batch 2"):
        start = med["start-up 2"] if mode == "batch 2" else med["start-up 1"]
        net = (med[mode] - (start if mode != "library" else 0.0)) / n
        per_worker = net * (2 if mode == "batch 2" else 1)
        print(
            f"{mode:<16}{med[mode] / n * 1e6:>9.1f}{net * 1e6:>13.1f}"
            f"{lib / per_worker:>14.2f}" + ("  (per worker)" if mode == "batch 2" else "")
        )
    speedup = med["batch 1"] / med["batch 2"]
    net_speedup = (med["batch 1"] - med["start-up 1"]) / (med["batch 2"] - med["start-up 2"])
    ctl = statistics.median(controls)
    print(
        f"2 workers vs 1: {speedup:.2f}x (net {net_speedup:.2f}x), parallel efficiency"
        f" {speedup / 2:.2f} (net {net_speedup / 2:.2f}); control (pure CPU) {ctl:.2f}x;"
        f" batch/control {net_speedup / ctl:.2f}"
    )
    for mode, kib in rss.items():
        print(f"peak RSS {mode:<16}{kib / 1024:>8.1f} MiB")


if __name__ == "__main__":
    main()

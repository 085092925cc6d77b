"""How each runbook operation's cost grows with the home: 1k, 10k, 100k and 1M proofs.

One home per size from ``make_home.build_home`` (10 anchors ``pkg:npm/scope<a>/*`` of
``--rotations`` rotations each, the audit events that produced it), then, in one process:

* ``open``: ``KeyManager.open`` of the home (median of 20), ms;
* ``cold`` / ``warm``: a sample of stored proofs verified by address, each once by a fresh
  manager, then again (``bench_verify_sizes.measure``: per-thread CPU, best of 3), as a ratio
  to ``cryptography``'s raw Ed25519 verify of the same signatures measured the same way;
* ``status``: ``KeyManager.anchor_status`` of one anchor (a tenth of the home's proofs) by a
  new manager with no PURL parsed yet in the process, best of 2, µs per proof of that anchor,
  and the whole ``stellaops anchor status`` process;
* ``audit``: ``audit_store`` (what ``stellaops audit verify`` runs: chain, state replay,
  dual-control check) in process CPU µs per event, best of 2, and the whole command.

Flat per-item columns across sizes mean the cost grows with the work asked, not with the
home. Run: ``python benchmarks/bench_home_growth.py [--sizes 1000,10000,100000,1000000]``
(1M builds in several minutes; ``--quick``: 1,000 and 10,000).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_verify_sizes import measure, size_arguments  # noqa: E402
from make_home import build_home  # noqa: E402

from stellakeys import FrozenClock, KeyManager  # noqa: E402
from stellakeys.audit_replay import audit_store  # noqa: E402
from stellakeys.manager_values import AnchorStatus  # noqa: E402
from stellakeys.purl_pattern import _parse_purl_cached  # noqa: E402
from stellakeys.storage.sqlite import SqliteStore  # noqa: E402
from stellakeys.times import format_time  # noqa: E402


def best(runs: int, work: Any) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def command_wall(home: Path, now: Any, *args: str) -> float:
    env = dict(
        os.environ,
        STELLAKEYS_HOME=str(home),
        STELLAKEYS_TEST_NOW=format_time(now),
        PYTHONPATH=str(HERE.parent),
        # From bytecode, as an installed package runs (bench_verify_paths.cli_row): the cache
        # goes next to the home, so the source tree is not written to.
        PYTHONPYCACHEPREFIX=str(home / "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-m", "stellakeys_cli", *args]
    subprocess.run(command, check=True, env=env, capture_output=True)  # writes the bytecode
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def one_size(root: Path, n: int, sample: int, rotations: int) -> dict[str, Any]:
    started = time.perf_counter()
    info = build_home(root / f"home-{n}", proofs=n, anchors=10, rotations=rotations)
    row: dict[str, Any] = {"row": f"{n:,} proofs", "proofs": n}
    row["build_s"] = time.perf_counter() - started
    row["db_mb"] = info.db.stat().st_size / 2**20
    step = max(1, n // sample)
    row.update(measure(info.home, list(info.digests[::step][:sample]), info.now))

    aid = str(info.anchor_ids[0])

    def status() -> AnchorStatus:
        # As the command starts: a new manager, no PURL parsed yet in the process.
        _parse_purl_cached.cache_clear()
        with KeyManager(SqliteStore(info.db), clock=FrozenClock(info.now)) as km:
            return km.anchor_status(aid)

    first = status()
    assert first.proofs_verified == first.proofs_total > 0, first
    row["status_proofs"] = first.proofs_total
    row["status_us"] = best(2, status) / first.proofs_total * 1e6
    store = SqliteStore(info.db)
    result, findings = audit_store(store, check_state=True, check_ceremonies=True)
    assert result.ok and findings == [], (result, findings)
    row["events"] = result.count
    row["audit_us"] = (
        best(2, lambda: audit_store(store, check_state=True, check_ceremonies=True))
        / result.count
        * 1e6
    )
    store.close()
    row["status_cli_s"] = command_wall(info.home, info.now, "anchor", "status", "--anchor-id", aid)
    row["audit_cli_s"] = command_wall(info.home, info.now, "audit", "verify")
    return row


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    sizes, sample, rotations = size_arguments(__doc__.splitlines()[0], argv)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"== bench_home_growth: {platform.machine()} {os.cpu_count()} cpus, load {load}")
    print(
        "| proofs | build s | DB MiB | open ms | cold ratio | warm ratio | status µs/proof"
        " (proofs) | `anchor status` s | audit µs/event (events) | `audit verify` s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            row = one_size(Path(tmp), n, sample, rotations)
            rows.append(row)
            print(
                f"| {n:,} | {row['build_s']:.1f} | {row['db_mb']:.0f} | {row['open_ms']:.2f}"
                f" | {row['cold_ratio']:.2f} | {row['warm_ratio']:.2f}"
                f" | {row['status_us']:.0f} ({row['status_proofs']:,})"
                f" | {row['status_cli_s']:.2f} | {row['audit_us']:.1f} ({row['events']:,})"
                f" | {row['audit_cli_s']:.2f} |",
                flush=True,
            )
    print(f"# load after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return rows


if __name__ == "__main__":
    main()

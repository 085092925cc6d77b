"""How verification cost grows with the home: 1k, 10k, 100k (and 1M) proofs.

For each size, a home from ``make_home.build_home`` (10 anchors of 300 rotations each unless
``--rotations``), then, in one process and one run:

* ``cold``: a fresh ``KeyManager`` verifies a sample of stored proofs by address, each once
  (every one a new PURL: the runbook's ``verify --proof-bundle sha256:...`` in production);
* ``warm``: the same sample again;
* ``raw``: ``cryptography``'s Ed25519 verify of the same PAE bytes, the floor;
* ``open``: ``KeyManager.open`` of the home (median of 20).

Ratios are per-thread CPU time (a shared machine's neighbours do not count), both sides
measured the same way in the same run. The table says whether cost per proof depends on the
home's size (it should not: every lookup is by index, every cache per anchor).

Run: ``python benchmarks/bench_verify_sizes.py [--sizes 1000,10000,100000] [--sample 2000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from make_home import build_home  # noqa: E402

from stellakeys import KeyManager  # noqa: E402

clock_ns = time.thread_time_ns


def measure(home_dir: Path, digests: Sequence[str], now: Any) -> dict[str, float]:
    km = KeyManager.open(home_dir)
    envelopes = [km.get_proof(d) for d in digests]
    # Raw: each sampled signature with its key, looked up outside the timing.
    keys = {}
    for a in km.list_anchors():
        for e in a.key_history:
            key = serialization.load_pem_public_key(e.public_key_pem.encode())
            assert isinstance(key, Ed25519PublicKey)
            keys[e.fingerprint] = keys[e.key_id] = key
    km.close()
    raw_items = [(keys[e.signatures[0].keyid or ""], e) for e in envelopes]

    def raw_pass() -> float:
        started = clock_ns()
        for key, env in raw_items:
            key.verify(env.signatures[0].sig, env.pae())
        return (clock_ns() - started) / len(raw_items) / 1000

    raw = min(raw_pass() for _ in range(3))
    cold_runs, warm_runs = [], []
    for _ in range(3):
        km = KeyManager.open(home_dir)
        started = clock_ns()
        for d in digests:
            result = km.verify(d, now=now)
        cold_runs.append((clock_ns() - started) / len(digests) / 1000)
        assert result.ok, result.reasons
        started = clock_ns()
        for d in digests:
            km.verify(d, now=now)
        warm_runs.append((clock_ns() - started) / len(digests) / 1000)
        km.close()
    opens = []
    for _ in range(20):
        began = time.perf_counter()
        KeyManager.open(home_dir).close()
        opens.append((time.perf_counter() - began) * 1000)
    cold, warm = min(cold_runs), min(warm_runs)
    return {
        "raw_us": raw,
        "cold_us": cold,
        "warm_us": warm,
        "cold_ratio": raw / cold,
        "warm_ratio": raw / warm,
        "open_ms": statistics.median(opens),
    }


def size_arguments(description: str, argv: Sequence[str] | None) -> tuple[list[int], int, int]:
    """``(sizes, sample, rotations)`` from ``--sizes``, ``--sample``, ``--rotations`` and
    ``--quick`` (shared with bench_home_growth.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--rotations", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="sizes 1000,10000; sample 500")
    args, _ = parser.parse_known_args(argv)
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    return sizes, 500 if args.quick else args.sample, args.rotations


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    sizes, sample, rotations = size_arguments(__doc__.splitlines()[0], argv)
    print(
        "== bench_verify_sizes:",
        platform.machine(),
        os.cpu_count(),
        "cpus, load average",
        " ".join(f"{x:.1f}" for x in os.getloadavg()),
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            started = time.perf_counter()
            info = build_home(Path(tmp) / f"home-{n}", proofs=n, rotations=rotations)
            built = time.perf_counter() - started
            step = max(1, n // sample)
            digests = list(info.digests[::step][:sample])
            row = {"row": f"{n:,} proofs", "proofs": n, "build_s": built}
            row.update(measure(info.home, digests, info.now))
            rows.append(row)
            print(
                f"{n:>9,} proofs  built {built:6.1f}s  raw {row['raw_us']:6.1f}us"
                f"  cold {row['cold_us']:7.1f}us ({row['cold_ratio']:.2f})"
                f"  warm {row['warm_us']:6.1f}us ({row['warm_ratio']:.2f})"
                f"  open {row['open_ms']:.2f}ms",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()

"""``anchor status`` against home size (issue 20): homes of 1k, 10k, 100k proofs over 10
anchors (benchmarks/make_home.py, 2 rotations each), status of one anchor (a tenth of the
proofs). Measured in one run, alternating, best of three, each pass
from a new ``KeyManager`` with no PURL parsed yet in the process (as the command starts):

* ``before``: the computation as it was (every proof of the home strictly parsed, every PURL
  matched again, the home's proofs held in a list), kept here as the reference;
* ``now``: ``KeyManager.anchor_status`` (stellakeys/anchor_proofs.py);
* ``verify only``: ``KeyManager.verify`` of the anchor's proofs alone, the floor any status
  that verifies every proof pays.

The two results must be equal (checked). Run: ``python benchmarks/bench_anchor_status.py
[--sizes 1000,10000,100000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from make_home import build_home  # noqa: E402

from stellakeys.clock import FrozenClock  # noqa: E402
from stellakeys.dsse import Envelope  # noqa: E402
from stellakeys.manager import KeyManager  # noqa: E402
from stellakeys.manager_values import safe_match, subject_purls  # noqa: E402
from stellakeys.purl_pattern import PurlPattern, _parse_purl_cached  # noqa: E402
from stellakeys.storage.sqlite import SqliteStore  # noqa: E402


def before(km: KeyManager, anchor_id: str) -> tuple[int, int]:
    """The pre-issue-20 loop (compromise bookkeeping left out: it is the same in both)."""
    anchor = km.get_anchor(anchor_id)
    pattern = PurlPattern.parse(anchor.purl_pattern)
    total = verified = 0
    with km.store.read() as tx:
        proofs = list(tx.iter_proofs())
    for proof in proofs:
        envelope = Envelope.from_json(proof.envelope_json)
        purl = next((p for p in subject_purls(envelope) if safe_match(pattern, p)), None)
        if purl is None:
            continue
        total += 1
        result = km.verify(
            envelope, purl=purl, at=proof.created_at, timestamps=proof.timestamp_tokens
        )
        verified += result.ok
    return total, verified


def verify_only(km: KeyManager, items: list[tuple[Envelope, str, datetime]]) -> int:
    return sum(km.verify(e, purl=p, at=at).ok for e, p, at in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,10000")
    args, _ = parser.parse_known_args()
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"# anchor status, SQLite, 10 anchors, load {os.getloadavg()[0]:.1f}")
    print("| home proofs | anchor proofs | before s | now s | verify only s | before/now |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            home = build_home(Path(tmp) / "home", proofs=size, anchors=10, rotations=2)
            km = KeyManager(SqliteStore(home.db), clock=FrozenClock(home.now))
            aid = str(home.anchor_ids[0])
            wanted = set(home.digests[0::10])
            with km.store.read() as tx:
                mine = [
                    (Envelope.from_json(p.envelope_json), p.created_at)
                    for p in tx.iter_proofs()
                    if p.digest in wanted
                ]
            items = [(e, subject_purls(e)[0], at) for e, at in mine]
            old_t: list[float] = []
            new_t: list[float] = []
            ver_t: list[float] = []
            km.close()

            def fresh(home: Any = home) -> KeyManager:
                # Each pass starts as `stellaops anchor status` does: a new manager (empty
                # anchor caches) and no PURL parsed yet in the process.
                _parse_purl_cached.cache_clear()
                return KeyManager(SqliteStore(home.db), clock=FrozenClock(home.now))

            for _ in range(3):
                with fresh() as km:
                    t = time.perf_counter()
                    old = before(km, aid)
                    old_t.append(time.perf_counter() - t)
                with fresh() as km:
                    t = time.perf_counter()
                    new = km.anchor_status(aid)
                    new_t.append(time.perf_counter() - t)
                with fresh() as km:
                    t = time.perf_counter()
                    ok = verify_only(km, items)
                    ver_t.append(time.perf_counter() - t)
                assert old == (new.proofs_total, new.proofs_verified), (old, new)
                assert ok == len(items) == new.proofs_total
        b, n, v = min(old_t), min(new_t), min(ver_t)
        print(f"| {size:,} | {len(items):,} | {b:.3f} | {n:.3f} | {v:.3f} | {b / n:.2f} |")
    print(f"# load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

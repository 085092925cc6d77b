"""``audit verify`` against log size (issue 20): the hash chain, the state replay and the
dual-control check over 1,000 / 10,000 / 100,000 events on SQLite.

Data (unchanged since issue 14): imported keys (a tenth of the events, KEY_IMPORTED),
anchors of 10 keys each (ANCHOR_CREATED, KEY_ADDED), half the memberships revoked
(KEY_REVOKED), and PROOF_SIGNED events up to the size; the tables hold exactly the state the
events imply. A quarter of the events change state: a key-heavy log (a real one is mostly
PROOF_SIGNED, which is cheaper to replay). Written through the store's transaction API.

Measured in one run, alternating, best of three, CPU-bound (microseconds per event):

* ``before``: what ``stellaops audit verify`` did before issue 20, kept here as the reference:
  ``verify_chain`` over ``iter_audit`` (an AuditEvent per row, fields re-serialised) feeding
  the replay, then a second pass for the dual-control check;
* ``chain``: ``KeyManager.verify_audit(check_state=False)``;
* ``now``: ``audit_store(check_state=True, check_ceremonies=True)``, the command's work: chain,
  replay and dual-control check in one streamed pass over ``iter_audit_rows``;
Data, ``--shape proofs``: a benchmarks/make_home.py home (10 anchors, min(N/2, 10,000)
signed proofs, PROOF_SIGNED filler up to N events), the shape of a production log.

* ``CLI``: the wall time of ``stellaops audit verify`` in a subprocess (start-up included).

Run: ``python benchmarks/bench_audit_verify.py [--sizes 1000,10000,100000]`` (``--quick``:
10,000 events).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditRecord, ChainVerification, EventType, verify_chain
from stellakeys.audit_replay import AuditReplay, audit_store
from stellakeys.ceremony.audit_check import check_protected_operations
from stellakeys.clock import FrozenClock
from stellakeys.manager import KeyManager
from stellakeys.storage.sqlite import SqliteStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_home import build_home

from stellakeys.times import format_time

T0 = datetime(2024, 1, 1, tzinfo=UTC)
PEM = (
    ed25519.Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def load(store: SqliteStore, events: int) -> None:
    from stellakeys.keys import KeyOrigin, KeyRecord

    n_keys = events // 10
    n_anchors = n_keys // 10
    written = 0

    def record(kind: str, **fields: object) -> AuditRecord:
        return AuditRecord(event_type=kind, actor="bench", timestamp=T0, **fields)  # type: ignore[arg-type]

    with store.transaction() as tx:
        for i in range(n_keys):
            fp = f"SHA256:{i:064x}"
            tx.insert_key(
                KeyRecord(f"k{i}", "ed25519", PEM, fp, T0, None, None, KeyOrigin.IMPORTED)
            )
            tx.append_audit(
                record(
                    EventType.KEY_IMPORTED,
                    key_id=f"k{i}",
                    details={"algorithm": "ed25519", "fingerprint": fp},
                )
            )
            written += 1
    for a in range(n_anchors):
        aid = uuid.UUID(int=a + 1)
        history = []
        with store.transaction() as tx:
            pattern = f"pkg:npm/scope{a}/*"
            tx.append_audit(
                record(
                    EventType.ANCHOR_CREATED,
                    anchor_id=aid,
                    details={
                        "purlPattern": pattern,
                        "keyIds": [],
                        "predicateTypes": ["evidence.stella/v1"],
                        "policyVersion": "v1",
                    },
                )
            )
            written += 1
            for j in range(10):
                k = a * 10 + j
                added = T0 + timedelta(days=j)
                revoked = added + timedelta(days=30) if j % 2 else None
                history.append(
                    KeyHistoryEntry(
                        aid,
                        f"k{k}",
                        "ed25519",
                        PEM,
                        f"SHA256:{k:064x}",
                        added,
                        revoked,
                        "annual-rotation" if revoked else None,
                    )
                )
            tx.insert_anchor(
                TrustAnchor(aid, pattern, ("evidence.stella/v1",), "v1", T0, tuple(history)),
                f"npm/scope{a}",
            )
            for e in history:
                tx.append_audit(
                    record(
                        EventType.KEY_ADDED,
                        key_id=e.key_id,
                        anchor_id=aid,
                        details={"addedAt": format_time(e.added_at)},
                    )
                )
                written += 1
                if e.revoked_at is not None:
                    tx.append_audit(
                        record(
                            EventType.KEY_REVOKED,
                            key_id=e.key_id,
                            anchor_id=aid,
                            details={
                                "reason": "annual-rotation",
                                "effectiveAt": format_time(e.revoked_at),
                            },
                        )
                    )
                    written += 1
    while written < events:
        with store.transaction() as tx:
            for _ in range(min(5000, events - written)):
                tx.append_audit(
                    record(
                        EventType.PROOF_SIGNED,
                        key_id=f"k{written % n_keys}",
                        details={"proof": f"sha256:{written:064x}", "payloadType": "x"},
                    )
                )
                written += 1


def before(store: SqliteStore) -> ChainVerification:
    """The pre-issue-20 pipeline (two passes, AuditEvents, verify_chain)."""
    with store.read() as tx:
        replay = AuditReplay()
        chain = verify_chain(replay.feed(tx.iter_audit()))
        replay.compare(tx.list_keys(), tx.list_anchors(), tx.list_ceremonies())
    with store.read() as tx:
        check_protected_operations(tx.iter_audit())
    return chain


def cli(home: Path) -> float:
    env = dict(os.environ, STELLAKEYS_HOME=str(home), PYTHONPATH=str(Path(__file__).parents[1]))
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "stellakeys_cli", "audit", "verify"],
            check=True,
            env=env,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument(
        "--shape",
        choices=("keys", "proofs"),
        default="keys",
        help="keys: the key-heavy log above; proofs: a make_home.py home (mostly PROOF_SIGNED)",
    )
    args, _ = parser.parse_known_args()
    sizes = [10_000] if args.quick else [int(x) for x in args.sizes.split(",")]
    where = f"python {sys.version.split()[0]}, {platform.machine()}"
    print(f"# audit verify, SQLite, {args.shape} log; {where}")
    print(f"# load before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| events | before us/event | chain us/event | now us/event | before/now | CLI s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for events in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            if args.shape == "keys":
                store = SqliteStore(home / "stellakeys.db")
                load(store, events)
            else:
                build_home(home, proofs=min(events // 2, 10_000), anchors=10, events=events)
                store = SqliteStore(home / "stellakeys.db")
            km = KeyManager(store, clock=FrozenClock(T0))
            runs: dict[str, list[float]] = {"before": [], "chain": [], "now": []}
            for _ in range(3):
                t = time.process_time()
                assert before(store).ok
                runs["before"].append(time.process_time() - t)
                t = time.process_time()
                assert km.verify_audit(check_state=False).count == events
                runs["chain"].append(time.process_time() - t)
                t = time.process_time()
                result, findings = audit_store(store, check_state=True, check_ceremonies=True)
                runs["now"].append(time.process_time() - t)
                assert result.ok and result.state_checked and result.count == events, result
                assert findings == []
            km.close()
            wall = cli(home)
        b, c, n = (min(runs[k]) / events * 1e6 for k in ("before", "chain", "now"))
        print(f"| {events:,} | {b:.1f} | {c:.1f} | {n:.1f} | {b / n:.1f} | {wall:.2f} |")
    print(f"# load after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

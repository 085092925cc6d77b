"""``audit verify`` at 100,000 events on SQLite: the hash chain alone, and the chain plus the
state replay (events replayed into keys, anchors, key history and ceremony states and compared
with the tables, docs/decisions/0013-revocation-evidence.md).

Data: 10,000 imported keys (KEY_IMPORTED), 1,000 anchors (ANCHOR_CREATED) of 10 keys each
(10,000 KEY_ADDED), 5,000 of those memberships revoked (KEY_REVOKED), and PROOF_SIGNED events
up to 100,000 events in all; the tables hold exactly the state the events imply. Written
through the store's transaction API in batches (the chain is computed as in production).

Measured: ``KeyManager.verify_audit(check_state=False)`` (chain only, the old check) and
``verify_audit()`` (chain + replay), best of three passes each, alternating.

Run: ``python benchmarks/bench_audit_verify.py`` (``--quick``: 10,000 events).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditRecord, EventType
from stellakeys.clock import FrozenClock
from stellakeys.manager import KeyManager
from stellakeys.storage.sqlite import SqliteStore
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args()
    events = 10_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        started = time.perf_counter()
        load(store, events)
        load_s = time.perf_counter() - started
        km = KeyManager(store, clock=FrozenClock(T0))
        chain: list[float] = []
        full: list[float] = []
        for _ in range(3):
            for check_state, into in ((False, chain), (True, full)):
                t = time.perf_counter()
                result = km.verify_audit(check_state=check_state)
                into.append(time.perf_counter() - t)
                assert result.ok, result
                assert result.count == events
        km.close()
    best_chain, best_full = min(chain), min(full)
    print(f"# audit verify, SQLite, {events:,} events (load {load_s:.1f} s)")
    print(f"# python {sys.version.split()[0]}, {platform.machine()}, load {os.getloadavg()[0]:.1f}")
    print("| check | best s | events/s |")
    print("| --- | ---: | ---: |")
    print(f"| chain only (`--chain-only`) | {best_chain:.2f} | {events / best_chain:,.0f} |")
    print(f"| chain + state replay | {best_full:.2f} | {events / best_full:,.0f} |")
    print(f"# replay overhead: x{best_full / best_chain:.2f}")


if __name__ == "__main__":
    main()

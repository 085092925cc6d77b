"""Cost of the signature self-check in ``KeyManager.sign`` (decision 0016).

``sign`` verifies every signature it made with the *recorded* public key before the proof is
stored or returned. Rows, per algorithm on the software key store (a 256-byte payload):

* ``sign`` end to end: ops/s of ``KeyManager.sign`` on the in-memory store (check included);
* the self-check alone: ops/s of ``verify_own_signatures`` on one signed envelope;
* its share: the self-check's time as a fraction of one ``sign``.

Each rate is the best of five timed batches. Run: ``python benchmarks/bench_sign_selfcheck.py``
(``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PAYLOAD = bytes(range(256))


def rate(operation: Callable[[], object], batch: int, batches: int = 5) -> float:
    best = float("inf")
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        best = min(best, time.perf_counter() - start)
    return batch / best


def main(argv: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    batch = 50 if args.quick else 500

    from stellakeys.dsse import sign_envelope
    from stellakeys.key_lifecycle import verify_own_signatures
    from stellakeys.keystores import KeyStoreContext
    from stellakeys.manager import KeyManager
    from stellakeys.profiles import SignerConfig
    from stellakeys.storage.memory import MemoryStore

    os.environ.setdefault("STELLAKEYS_PASSPHRASE", "bench-passphrase")
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for alg in ("ed25519", "ecdsa-p256-sha256", "ml-dsa-65"):
            config = SignerConfig.from_dict(
                {
                    "signer": {
                        "profiles": {"default": {"algorithm": alg, "keyStore": "software://b"}}
                    }
                }
            )
            manager = KeyManager(
                MemoryStore(), config=config, keystore_context=KeyStoreContext(home=Path(home))
            )
            record = manager.generate_key(f"bench-{alg}")
            handle = manager._handle(record)
            envelope = sign_envelope("text/plain", PAYLOAD, [handle], [record.key_id])
            counter = iter(range(10**9))

            def sign(
                m: KeyManager = manager, k: str = record.key_id, n: Iterator[int] = counter
            ) -> object:
                # A distinct payload each time, so every proof is a new stored row.
                return m.sign(PAYLOAD + str(next(n)).encode(), k, "text/plain")

            def check(e: object = envelope, r: object = record, h: object = handle) -> None:
                verify_own_signatures(e, [r], [h])  # type: ignore[list-item,arg-type]

            signs = rate(sign, batch)
            checks = rate(check, batch)
            rows.append((alg, signs, checks, signs / checks))
            manager.close()
    print("| algorithm | sign ops/s (check included) | self-check ops/s | check share of sign |")
    print("| --- | ---: | ---: | ---: |")
    for alg, signs, checks, share in rows:
        print(f"| {alg} | {signs:,.0f} | {checks:,.0f} | {share:.0%} |")
    return rows


if __name__ == "__main__":
    main()

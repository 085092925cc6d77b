"""Verification against the raw primitive, on every path the issue-20 table names.

Each row is a ratio measured within one run: stellakeys' ``KeyManager.verify`` (an envelope
given as JSON bytes, as the CLI and service receive it: parse, anchor lookup, in-toto
binding, key validity at T, DSSE) against ``cryptography``'s raw Ed25519 verify of the same
PAE bytes (the floor). Rows:

Every row's ``ratio`` is against ``cryptography``'s (OpenSSL's) Ed25519 verify, the reference
the issue names; ``ratio_libsodium`` is against libsodium's, the primitive stellakeys itself
uses once a process has verified 100 Ed25519 signatures (OpenSSL still decides every refusal).

* ``warm small``: a small in-toto statement, anchor cached; best-of rounds and, separately,
  raw and library alternating item by item (the same CPU state for both);
* ``warm 64 KiB``: the same with a 64 KiB statement (raw verifies the 64 KiB PAE too);
* ``warm 300 rotations``: the anchor has held 300 keys (299 revoked by rotation);
* ``cold by address``: each proof given by its ``sha256:`` address, each with its own PURL
  never seen by the process (so each misses the per-PURL cache and the PURL parse cache),
  verified once, on the 300-rotation anchor;
* ``open``: opening the SQLite store and a ``KeyManager`` on homes of several shapes;
* ``cli``: ``stellaops verify --proof-bundle F`` as a process against ``python -c "import
  cryptography...ed25519"`` (process start-up), best of several.

Run: ``python benchmarks/bench_verify_paths.py [--quick] [--json F]``. Targets (reported,
and the floors of ``run_all.py --quick``) are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stellakeys import KeyHistoryEntry, KeyManager, TrustAnchor
from stellakeys.crypto import get_algorithm
from stellakeys.dsse import Envelope, pae, sign_envelope
from stellakeys.purl import PurlPattern
from stellakeys.purl_pattern import _parse_purl_cached
from stellakeys.storage.ports import ProofRecord
from stellakeys.storage.sqlite import SqliteStore

PREDICATE = "evidence.stella/v1"
START = datetime(2024, 1, 1, tzinfo=UTC)
AT = datetime(2030, 6, 1, tzinfo=UTC)
INTOTO = "application/vnd.in-toto+json"


def statement(purl: str, pad: int = 0, records: bool = False) -> bytes:
    predicate: dict[str, Any] = {"builder": "ci", "run": 1}
    if pad and not records:
        # A big predicate carried as one value (an attached document, a log).
        predicate["document"] = "x" * pad
    elif pad:
        # An SBOM-like predicate: many small records, which the strict parser walks one by one.
        n = pad // 64
        predicate["components"] = [
            {"name": f"component-{i:06d}", "version": "1.2.3", "hash": f"{i:032x}"}
            for i in range(n)
        ]
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": purl, "digest": {"sha256": "ab" * 32}}],
            "predicateType": PREDICATE,
            "predicate": predicate,
        },
        separators=(",", ":"),
    ).encode()


class Home:
    """A SQLite home with one anchor over ``pkg:npm/*`` that has held ``rotations`` keys, each
    valid for a day then revoked by rotation; the last one valid now."""

    def __init__(self, root: Path, rotations: int) -> None:
        self.root = root
        alg = get_algorithm("ed25519")
        self.keys = [alg.generate() for _ in range(rotations)]
        self.current = self.keys[-1]
        aid = uuid.UUID(int=1)
        history = tuple(
            KeyHistoryEntry(
                anchor_id=aid,
                key_id=f"key-{i}",
                algorithm="ed25519",
                public_key_pem=k.public_key().to_pem(),
                fingerprint=k.fingerprint,
                added_at=START + timedelta(days=i),
                revoked_at=START + timedelta(days=i + 1) if i < rotations - 1 else None,
                revoke_reason="rotation" if i < rotations - 1 else None,
            )
            for i, k in enumerate(self.keys)
        )
        self.key_id = f"key-{rotations - 1}"
        pattern = PurlPattern.parse("pkg:npm/*")
        store = SqliteStore.open_home(root)
        with store.transaction() as tx:
            tx.insert_anchor(
                TrustAnchor(aid, pattern.text, (PREDICATE,), "v1", START, history),
                pattern.index_key,
            )
        store.close()

    def envelope(self, purl: str, pad: int = 0, records: bool = False) -> Envelope:
        payload = statement(purl, pad, records)
        return sign_envelope(INTOTO, payload, [self.current], keyids=[self.key_id])

    def store_proofs(self, envelopes: Sequence[Envelope]) -> list[str]:
        store = SqliteStore.open_home(self.root)
        digests = []
        with store.transaction() as tx:
            for env in envelopes:
                body = env.to_json()
                digest = env.digest()
                tx.put_proof(ProofRecord(digest, body, START, ()))
                digests.append(digest)
        store.close()
        return digests

    def manager(self) -> KeyManager:
        return KeyManager(SqliteStore.open_home(self.root))


def raw_verifier(envelope: Envelope, public_pem: str) -> Callable[[], None]:
    """cryptography's Ed25519 verify of the envelope's PAE: the floor."""
    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    sig = envelope.signatures[0].sig
    message = pae(envelope.payload_type, envelope.payload)
    return lambda: key.verify(sig, message)


def sodium_raw_verifier(envelope: Envelope, public_pem: str) -> Callable[[], None]:
    """libsodium's Ed25519 check of the same PAE (PyNaCl), the primitive stellakeys uses from
    a process's 101st Ed25519 verification on (stellakeys/crypto/_pyca.py); OpenSSL remains
    the authority on every refusal. A second floor, reported beside the first."""
    from nacl.bindings import crypto_sign_open

    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signed = envelope.signatures[0].sig + pae(envelope.payload_type, envelope.payload)
    return lambda: crypto_sign_open(signed, raw)


# CPU time of this thread, not wall time: on a shared machine other processes take the CPU
# in bursts, and a ratio of wall times then measures the neighbours. Both sides of every
# ratio are measured the same way, in the same run.
clock_ns = time.thread_time_ns


def best_rate(fn: Callable[[], Any], n: int, rounds: int = 3) -> float:
    best = 0.0
    for _ in range(rounds):
        started = clock_ns()
        for _ in range(n):
            fn()
        best = max(best, n / ((clock_ns() - started) / 1e9))
    return best


def alternating(a: Callable[[], Any], b: Callable[[], Any], n: int) -> float:
    """b's speed as a fraction of a's, the two taking turns item by item (median ratio of
    per-item times over blocks of 50)."""
    ratios = []
    for _ in range(max(1, n // 50)):
        ta = tb = 0
        for _ in range(50):
            t0 = clock_ns()
            a()
            t1 = clock_ns()
            b()
            tb += clock_ns() - t1
            ta += t1 - t0
        ratios.append(ta / tb)
    return statistics.median(ratios)


def warm_rows(tmp: Path, n: int, rotations: int) -> list[dict[str, Any]]:
    rows = []
    for label, rot, pad, records in (
        ("warm small", 1, 0, False),
        ("warm 64 KiB", 1, 64 * 1024, False),
        ("warm 64 KiB of 1,000 records", 1, 64 * 1024, True),
        (f"warm {rotations} rotations", rotations, 0, False),
    ):
        home = Home(tmp / label.replace(" ", "-").replace(",", ""), rot)
        env = home.envelope("pkg:npm/app@1.0.0", pad, records)
        body = env.to_json()
        km = home.manager()
        assert km.verify(body, at=AT).ok, km.verify(body, at=AT).reasons
        raw = raw_verifier(env, home.current.public_key().to_pem())

        def ours(km: KeyManager = km, body: bytes = body) -> None:
            km.verify(body, at=AT)

        raw_rate = best_rate(raw, n)
        our_rate = best_rate(ours, n)
        sodium = sodium_raw_verifier(env, home.current.public_key().to_pem())
        rows.append(
            {
                "row": label,
                "raw_per_s": raw_rate,
                "ours_per_s": our_rate,
                "ratio": our_rate / raw_rate,
                "alternating": alternating(raw, ours, n),
                "ratio_libsodium": our_rate / best_rate(sodium, n),
            }
        )
        km.close()
    return rows


def cold_row(tmp: Path, n: int, rotations: int) -> dict[str, Any]:
    home = Home(tmp / "cold", rotations)
    # Each round has its own proofs and PURLs: a PURL verified in an earlier round would sit
    # in the process-wide parse cache, and the round would no longer be cold.
    envs = [[home.envelope(f"pkg:npm/app-r{r}-{i}@1.0.0") for i in range(n)] for r in range(3)]
    rounds = [home.store_proofs(e) for e in envs]
    raw = raw_verifier(envs[0][0], home.current.public_key().to_pem())
    raw_rate = best_rate(raw, n)
    best = 0.0
    for digests in rounds:
        # Storing the proofs parsed their PURLs (the proof index) in this process; a verifier
        # has usually not written what it verifies, so forget them.
        _parse_purl_cached.cache_clear()
        km = home.manager()
        km.verify(digests[0], at=AT)  # the store is open and the anchor known once
        started = clock_ns()
        for d in digests[1:]:
            result = km.verify(d, at=AT)
        best = max(best, (len(digests) - 1) / ((clock_ns() - started) / 1e9))
        assert result.ok, result.reasons
        km.close()
    sodium = sodium_raw_verifier(envs[0][0], home.current.public_key().to_pem())
    return {
        "row": f"cold by address, {rotations} rotations",
        "raw_per_s": raw_rate,
        "ours_per_s": best,
        "ratio": best / raw_rate,
        "alternating": None,
        "ratio_libsodium": best / best_rate(sodium, n),
    }


def open_rows(tmp: Path, shapes: Sequence[tuple[str, int, int]]) -> list[dict[str, Any]]:
    rows = []
    for label, keys, proofs in shapes:
        root = tmp / f"open-{label}"
        store = SqliteStore.open_home(root)
        alg_key = get_algorithm("ed25519").generate()
        from stellakeys.keys import KeyOrigin, KeyRecord

        with store.transaction() as tx:
            for i in range(keys):
                tx.insert_key(
                    KeyRecord(
                        key_id=f"k{i}",
                        algorithm="ed25519",
                        public_key_pem=alg_key.public_key().to_pem(),
                        fingerprint=f"{i:064x}",
                        created_at=START,
                        origin=KeyOrigin.IMPORTED,
                    )
                )
            for i in range(proofs):
                body = b'{"payload":"%d","payloadType":"text/plain","signatures":[]}' % i
                import hashlib

                tx.put_proof(
                    ProofRecord("sha256:" + hashlib.sha256(body).hexdigest(), body, START, ())
                )
        store.close()
        times = []
        for _ in range(30):
            started = time.perf_counter()
            km = KeyManager.open(root)  # settings, store, authorizer: what applications call
            with km.store.read():
                pass
            times.append(time.perf_counter() - started)
            km.close()
        rows.append(
            {
                "row": f"KeyManager.open, {label}",
                "median_ms": statistics.median(times) * 1000,
            }
        )
    return rows


def cli_row(tmp: Path) -> dict[str, Any]:
    home = Home(tmp / "cli", 1)
    (digest,) = home.store_proofs([home.envelope("pkg:npm/app@1.0.0")])
    baseline = [sys.executable, "-c", "import cryptography.hazmat.primitives.asymmetric.ed25519"]
    # The installed ``stellaops`` script, as the runbook runs it (its wrapper imports
    # stellakeys_cli.process:run); ``python -m stellakeys_cli`` where it is not installed.
    script = Path(sys.executable).with_name("stellaops")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "stellakeys_cli"]
    cli = [
        *entry,
        "--home",
        str(home.root),
        "verify",
        "--proof-bundle",
        digest,
        "--at-time",
        "2030-06-01T00:00:00Z",
    ]
    env_vars = dict(os.environ, STELLAKEYS_PASSPHRASE="bench")
    # Both sides run from bytecode, as an installed package does (pip compiles it): with
    # PYTHONDONTWRITEBYTECODE set (as in this project's shells) every run would compile the
    # stellakeys sources again, tens of ms the baseline's site-packages never pay. The cache
    # goes to a temporary prefix, so the source tree is not written to.
    env_vars.pop("PYTHONDONTWRITEBYTECODE", None)
    env_vars["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")

    def run(cmd: list[str]) -> float:
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=env_vars, check=False)
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{cmd} failed: {done.stderr.decode()[-500:]}")
        return took

    run(baseline)
    run(cli)  # warm-up: writes the bytecode cache
    base = []
    ours = []
    for _ in range(7):
        base.append(run(baseline))
        ours.append(run(cli))
    return {
        "row": "stellaops verify --proof-bundle (process)",
        "command": Path(entry[0]).name if len(entry) == 1 else "python -m stellakeys_cli",
        "baseline_s": min(base),
        "ours_s": min(ours),
        "times_baseline": min(ours) / min(base),
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(
        argv if argv is not None else [a for a in sys.argv[1:] if a in ("--quick",)]
    )
    n = 1000 if args.quick else 5000
    rotations = 300
    print(
        "== bench_verify_paths:",
        platform.machine(),
        os.cpu_count(),
        "cpus, load average",
        " ".join(f"{x:.1f}" for x in os.getloadavg()),
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows += warm_rows(tmp, n, rotations)
        rows.append(cold_row(tmp, n, rotations))
        by = {r["row"]: r for r in rows}
        small = by["warm small"]["ratio"]
        # Derived, so a guard survives a noisy machine: both sides share the run's noise.
        rows.append(
            {"row": "history independence (300 rotations / small)",
             "ratio": by[f"warm {rotations} rotations"]["ratio"] / small}
        )  # fmt: skip
        rows.append(
            {"row": "cold / warm", "ratio": by[f"cold by address, {rotations} rotations"]["ratio"]
             / small}
        )  # fmt: skip
        shapes = [("empty", 0, 0), ("1k keys", 1000, 0), ("1k keys, 100k proofs", 1000, 100_000)]
        if args.quick:
            shapes = shapes[:2]
        rows += open_rows(tmp, shapes)
        rows.append(cli_row(tmp))
    for r in rows:
        print(
            "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

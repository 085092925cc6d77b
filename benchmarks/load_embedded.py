"""Load test of one home: 8 writer processes, 2 readers and 1 key rotator for a fixed time.

Each process keeps one KeyManager open, as a service would. Writers sign small payloads with
one Ed25519 key; readers verify proofs signed before the run (key-only policy) and list keys;
the rotator rotates a key chain (``rot-0`` -> ``rot-1`` -> ...), each rotation revoking the
replaced key. Afterwards, in a fresh process:

* every proof a writer reported as signed must be stored and verify ("lost proofs": 0);
* the audit chain must verify, with one PROOF_SIGNED event per signed proof;
* SQLite: ``PRAGMA integrity_check`` must say ``ok``.

Reported: signs/s (all writers), reads/s, rotations, errors (must be 0), lost proofs (must
be 0), the audit chain result. Run on the embedded SQLite default and on PostgreSQL (a
throwaway server started the way tests/postgres does, Debian's PostgreSQL binaries).

Processes start with the "spawn" method: nothing is inherited through fork().

Run: ``python benchmarks/load_embedded.py [--seconds 20] [--backend sqlite|postgres|both]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests" / "postgres")]

WRITERS, READERS = 8, 2
PASSPHRASE = "load-test-passphrase"


def _environ(home: Path, url: str | None) -> None:
    os.environ.update(
        STELLAKEYS_HOME=str(home), STELLAKEYS_PASSPHRASE=PASSPHRASE, STELLAKEYS_ACTOR="load@test"
    )
    if url:
        os.environ["STELLAKEYS_DATABASE_URL"] = url


def _work(role: str, index: int, home: str, url: str | None, go: Any, window: Any,
          seeds: list[str], out: Any) -> None:  # fmt: skip
    _environ(Path(home), url)
    from stellakeys import KeyManager
    from stellakeys.verification import VerificationPolicy

    key_only = VerificationPolicy(require_anchor=False)
    done: list[str] = []
    ops, errors, samples = 0, 0, []
    with KeyManager.open() as km:
        # Warm up outside the window: config, store, and the key store's passphrase
        # derivation (scrypt, once per process), which every signing or generating process pays.
        warm = km.sign(b'{"warm": %d}' % index, "writer", "x/json")
        out.put("ready")
        go.wait()
        start, stop = window[0], window[1]
        time.sleep(max(0.0, start - time.time()))
        n = 0
        while time.time() < stop:
            try:
                if role == "writer":
                    done.append(km.sign(b'{"w": %d, "n": %d}' % (index, n), "writer", "x/json"))
                elif role == "reader":
                    if not km.verify(seeds[n % len(seeds)], policy=key_only).ok:
                        raise RuntimeError("a seed proof did not verify")
                    km.list_keys()
                else:
                    km.rotate_key(
                        f"rot-{n + 1}",
                        replaces=f"rot-{n}",
                        revoke_replaced_at=km.clock.now(),
                    )
                ops += 1
            except Exception as exc:  # counted and reported: the result must be 0
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}")
            n += 1
    out.put({"role": role, "ops": ops, "errors": errors, "samples": samples, "signed": done,
             "warm": warm})  # fmt: skip


def run(backend: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stellakeys-load-") as tmp:
        home = Path(tmp) / "home"
        server = None
        url = None
        if backend == "postgres":
            from pg_server import PostgresServer

            from stellakeys.storage.postgres import migrate_url

            server = PostgresServer(durable=True)
            url = server.create_database("load")
            migrate_url(url)
        try:
            return _run(home, url, backend, seconds)
        finally:
            if server is not None:
                server.stop()


def _run(home: Path, url: str | None, backend: str, seconds: float) -> dict[str, Any]:
    _environ(home, url)
    from stellakeys import KeyManager
    from stellakeys.verification import VerificationPolicy

    with KeyManager.open() as km:
        km.generate_key("writer")
        km.generate_key("rot-0")
        seeds = [km.sign(b'{"seed": %d}' % i, "writer", "x/json") for i in range(20)]
        events_before = km.verify_audit().count
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go, window = ctx.Event(), ctx.Array("d", 2)
    roles = ["writer"] * WRITERS + ["reader"] * READERS + ["rotator"]
    procs = [
        ctx.Process(target=_work, args=(r, i, str(home), url, go, window, seeds, out))
        for i, r in enumerate(roles)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every process imported and opened its store before the clock starts
        assert out.get(timeout=300) == "ready"
    window[0] = time.time() + 0.5
    window[1] = window[0] + seconds
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(60)
    signed = [d for r in results for d in r["signed"]]
    every = signed + [r["warm"] for r in results] + seeds
    by = {role: [r for r in results if r["role"] == role] for role in set(roles)}
    key_only = VerificationPolicy(require_anchor=False)
    with KeyManager.open() as km:
        lost = 0
        for digest in every:
            try:
                lost += not km.verify(digest, policy=key_only).ok
            except Exception:
                lost += 1
        chain = km.verify_audit()
        proof_events = len(km.audit_events(_signed_query()))
    integrity = None
    if backend == "sqlite":
        with sqlite3.connect(home / "stellakeys.db") as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
    return {
        "backend": backend,
        "seconds": seconds,
        "signs": len(signed),
        "signs_per_s": round(len(signed) / seconds, 1),
        "reads_per_s": round(sum(r["ops"] for r in by["reader"]) / seconds, 1),
        "rotations": sum(r["ops"] for r in by["rotator"]),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [s for r in results for s in r["samples"]][:5],
        "lost_proofs": lost,
        "audit_ok": chain.ok,
        "audit_events": chain.count,
        "audit_new_events": chain.count - events_before,
        "proof_events_match": proof_events == len(every),
        "integrity_check": integrity,
    }


def _signed_query() -> Any:
    from stellakeys.audit import AuditQuery

    return AuditQuery(event_type="PROOF_SIGNED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} CPUs, Python {platform.python_version()},"
          f" SQLite {sqlite3.sqlite_version}")  # fmt: skip
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    failed = False
    for backend in backends:
        result = run(backend, args.seconds)
        print(json.dumps(result))
        failed |= bool(
            result["errors"] or result["lost_proofs"] or not result["audit_ok"]
            or not result["proof_events_match"] or result["integrity_check"] not in (None, "ok")
        )  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

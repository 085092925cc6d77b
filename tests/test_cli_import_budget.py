"""``stellaops verify`` of a plain software-key proof loads only what verification needs.

Runs ``python -X importtime -m stellakeys_cli verify ...`` in a subprocess and fails when a
module on the forbidden list is imported: database drivers it does not use, HSM and cloud
SDKs, presentation (rich tables, notebooks), the signer service, and the parts of stellakeys
that a read-only verification never touches (the KeyManager facade, key stores, ceremony
execution). Each of them is start-up time every verification in a CI pipeline pays
(issue 20: the CLI must start in a blink).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.crypto import get_algorithm
from stellakeys.dsse import sign_envelope
from stellakeys.intoto import PAYLOAD_TYPE, Statement, Subject
from stellakeys.purl import PurlPattern
from stellakeys.storage.ports import ProofRecord
from stellakeys.storage.sqlite import SqliteStore
from stellakeys_cli.main import main

FORBIDDEN = (
    "psycopg",
    "psycopg_pool",
    "pkcs11",
    "boto3",
    "botocore",
    "rich",
    "jinja2",
    "pandas",
    "matplotlib",
    "dask",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "jsonschema",
    "rfc3161_client",
    "prometheus_client",
    "stellakeys.manager",
    "stellakeys.keystores.software",
    "stellakeys.keystores.pkcs11",
    "stellakeys.keystores.kms",
    "stellakeys.ceremony.service",
    "stellakeys.ceremony.execution",
    "stellakeys.notebook",
    "stellakeys.forensics",
    "stellakeys_server",
    # Made lazy for issue 20's start-up row; each was measurable start-up time.
    "stellakeys.ceremony",  # ports and the SQL core import the models only for annotations
    "stellakeys.audit",
    "stellakeys.intents",
    "stellakeys.storage._ceremony_codec",
    "stellakeys.storage._intent_codec",
    "stellakeys.storage.memory",
    "stellakeys.storage.postgres",
    "stellakeys.storage._postgres_sql",
    "stellakeys.storage._postgres_repos",
    "stellakeys.timestamp",
    "stellakeys.timestamp_token",
    "stellakeys.config_schema",
    "yaml",
    # The registry loads a backend when its algorithm is first used: Ed25519 needs neither
    # libcrypto through ctypes (GOST, SM2) nor ECDSA's or ML-DSA's modules.
    "stellakeys.crypto._gost",
    "stellakeys.crypto._sm2",
    "stellakeys.crypto._native",
    "stellakeys.crypto._libcrypto",
    "stellakeys.crypto._libcrypto_core",
    "stellakeys.crypto._pyca_ec",
    "stellakeys.crypto._pyca_mldsa",
    "ctypes",
    # libsodium (PyNaCl) speeds up Ed25519 only from a process's 101st verification on: its
    # import costs more than one verification saves (stellakeys/crypto/_pyca.py).
    "nacl",
    # The public serialization package imports the SSH key code; Ed25519 needs none of it.
    "cryptography.hazmat.primitives.serialization",
    "socket",  # the default actor's host name comes from uname
    "importlib.resources",  # migrations are read from the package directory
)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _home(root: Path) -> str:
    key = get_algorithm("ed25519").generate()
    aid = uuid.UUID(int=1)
    entry = KeyHistoryEntry(
        anchor_id=aid,
        key_id="release-key",
        algorithm="ed25519",
        public_key_pem=key.public_key().to_pem(),
        fingerprint=key.fingerprint,
        added_at=T0,
    )
    pattern = PurlPattern.parse("pkg:npm/*")
    statement = Statement(
        (Subject("pkg:npm/app@1.0.0", {"sha256": "ab" * 32}),), "evidence.stella/v1", {}
    )
    envelope = sign_envelope(PAYLOAD_TYPE, statement.to_json(), [key], keyids=["release-key"])
    store = SqliteStore.open_home(root)
    with store.transaction() as tx:
        tx.insert_anchor(
            TrustAnchor(aid, pattern.text, ("evidence.stella/v1",), "v1", T0, (entry,)),
            pattern.index_key,
        )
        tx.put_proof(ProofRecord(envelope.digest(), envelope.to_json(), T0, ()))
    store.close()
    return envelope.digest()


def imported_modules(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_plain_verify_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    home = tmp_path / "home"
    digest = _home(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env["STELLAKEYS_TEST_NOW"] = "2030-01-01T00:00:00Z"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stellakeys_cli", "--home", str(home),
         "verify", "--proof-bundle", digest],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("OK: " + digest)
    modules = imported_modules(proc.stderr)
    assert "stellakeys.verifier" in modules  # the measurement itself works
    loaded = sorted(m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + "."))
    assert loaded == [], f"a plain verify imported {loaded}"


# --- the process's cyclic collector (decision 0033) -------------------------------------------

#: Runs the CLI as the ``stellaops`` script does (``python -m stellakeys_cli``) and reports on
#: stderr, at exit, how many collections ran and the collector's state.
_WATCHED = """
import atexit, gc, json, runpy, sys
first = gc.get_threshold()
runs = [0, 0, 0]
gc.callbacks.append(lambda phase, info: phase == "stop" and runs.__setitem__(
    info["generation"], runs[info["generation"]] + 1))
atexit.register(lambda: sys.stderr.write("GC " + json.dumps({
    "runs": runs, "frozen": gc.get_freeze_count(), "first": first,
    "threshold": gc.get_threshold(), "enabled": gc.isenabled()}) + "\\n"))
sys.argv = ["stellaops", *sys.argv[1:]]
runpy.run_module("stellakeys_cli", run_name="__main__", alter_sys=True)
"""


def _watched(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env["STELLAKEYS_TEST_NOW"] = "2030-01-01T00:00:00Z"
    proc = subprocess.run(
        [sys.executable, "-c", _WATCHED, *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("GC ")]
    assert lines, proc.stdout + proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(lines[-1][3:])
    return proc, report


def test_stellaops_collects_nothing_while_it_starts(tmp_path: Path) -> None:
    """Start-up allocates tens of thousands of objects that live until exit; the process
    does not scan them while they load (about 35 young and 3 older collections, ~7 ms,
    without decision 0033), freezes them once the store is open, and then collects with
    Python's own thresholds again."""
    home = tmp_path / "home"
    digest = _home(home)
    proc, report = _watched("--home", str(home), "verify", "--proof-bundle", digest)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("OK: " + digest)
    assert sum(report["runs"]) <= 2, report
    assert report["frozen"] > 10_000, report  # frozen when the store opened, and at exit
    assert report["threshold"] == report["first"], report  # the usual thresholds again
    assert report["enabled"] is True


def test_a_command_that_opens_no_store_still_collects(tmp_path: Path) -> None:
    """Start-up raises the young threshold; it never switches collection off. A command that
    never opens a store (here, cyclic garbage made before anything settles) is still
    collected, within the raised bound."""
    program = (
        "import gc\n"
        "from stellakeys_cli import collector\n"
        "collector.starting()\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'stop' and runs.append(info))\n"
        "for _ in range(3 * collector.STARTING_THRESHOLD):\n"
        "    cycle = []\n"
        "    cycle.append(cycle)\n"
        "assert gc.isenabled()\n"
        "assert sum(r['collected'] for r in runs) >= collector.STARTING_THRESHOLD, runs\n"
        "print('collected')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "collected", proc.stderr[-3000:]


def test_the_cli_called_in_process_leaves_the_collector_alone(tmp_path: Path) -> None:
    """Tests and applications call ``main`` (or click's runner) in their own process: no
    frozen objects, no changed thresholds there."""
    home = tmp_path / "home"
    digest = _home(home)
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(home), "verify", "--proof-bundle", digest, "--at-time",
              "2030-01-01T00:00:00Z"])  # fmt: skip
    assert exited.value.code == 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)

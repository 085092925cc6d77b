"""Shared by the SQLite and PostgreSQL crash tests of key generate / rotate (decision 0016).

A child process runs one operation with the test-only ``STELLAKEYS_TEST_CRASH_AT=<point>``,
which makes it SIGKILL itself exactly at that point; the test then re-runs the operation
without the variable and checks that it completes with one consistent key: the record's
public key is the key store's, no intent is left, and ``doctor`` finds nothing more after
removing the temp file a crash mid-write leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from stellakeys.key_lifecycle import diagnose, repair
from stellakeys.manager import KeyManager

PASSPHRASE = "crash-test-passphrase"

#: Every crash point on the generate / rotate path, in the order they are reached.
CRASH_POINTS = (
    "intent-written",
    "key-prepared",
    "software-tmp-written",
    "key-created",
    "before-commit",
    "committed",
)

SIGNER_YAML = """\
signer:
  profiles:
    default:
      algorithm: ed25519
      keyStore: software://crash
"""

_DRIVER = """
import json, sys
from stellakeys.manager import KeyManager
home, url, op, key_id, replaces = sys.argv[1:6]
with KeyManager.open(home, database_url=url or None) as m:
    if op == "generate":
        r = m.generate_key(key_id)
    else:
        r = m.rotate_key(key_id, replaces=replaces)
    print(json.dumps({"keyId": r.key_id, "fingerprint": r.fingerprint}))
"""


def make_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "signer.yaml").write_text(SIGNER_YAML)
    return home


def env(crash_at: str | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "STELLAKEYS_TEST_CRASH_AT"}
    out["STELLAKEYS_PASSPHRASE"] = PASSPHRASE
    out["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    if crash_at is not None:
        out["STELLAKEYS_TEST_CRASH_AT"] = crash_at
    return out


def run_op(
    home: Path, url: str, op: str, key_id: str, replaces: str = "", crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, str(home), url, op, key_id, replaces],
        env=env(crash_at),
        capture_output=True,
        text=True,
        timeout=120,
    )


def open_manager(home: Path, url: str) -> KeyManager:
    os.environ["STELLAKEYS_PASSPHRASE"] = PASSPHRASE
    return KeyManager.open(home, database_url=url or None)


def setup_rotation(home: Path, url: str) -> None:
    """An old key in an anchor, for ``rotate --replaces old``."""
    with open_manager(home, url) as m:
        m.generate_key("old")
        m.create_anchor("pkg:npm/*", ["old"], ["evidence.stella/v1"])


def crash_then_rerun(home: Path, url: str, op: str, point: str) -> None:
    """Kill ``op`` of key ``new`` at ``point``, then re-run it to completion, and check."""
    replaces = "old" if op == "rotate" else ""
    crashed = run_op(home, url, op, "new", replaces, crash_at=point)
    assert crashed.returncode == -signal.SIGKILL, (point, crashed.stdout, crashed.stderr)

    rerun = run_op(home, url, op, "new", replaces)
    if point == "committed":
        # It had finished: the re-run says so, and nothing is half-done.
        assert rerun.returncode == 1, rerun.stderr
        assert "already exists" in rerun.stderr
    else:
        assert rerun.returncode == 0, (point, rerun.stderr)
        assert json.loads(rerun.stdout)["keyId"] == "new"

    with open_manager(home, url) as m:
        record = m.get_key("new")
        found = m._key_store("software://crash").find("new")  # type: ignore[attr-defined]
        assert found is not None
        assert found.public_key.fingerprint == record.fingerprint
        with m.store.read() as tx:
            assert tx.list_intents() == []
        if op == "rotate":
            anchor = m.list_anchors()[0]
            assert anchor.entry("new") is not None  # the rotation's transaction committed
        assert m.verify_audit().ok
        # Exactly one KEY_GENERATED for the key: the crash left no second, half-done record.
        generated = [
            e for e in m.audit_events() if e.event_type == "KEY_GENERATED" and e.key_id == "new"
        ]
        assert len(generated) == 1
        # The signing path works with the adopted or generated key.
        m.sign(b"after the crash", "new", "text/plain")
        left = diagnose(m, tmp_min_age_seconds=0)
        kinds = {f.kind for f in left.findings}
        if point == "software-tmp-written":
            assert kinds == {"stale-tmp"}, left
            repaired = repair(m, left)
            assert all(f.repaired == "removed" for f in repaired.findings)
            left = diagnose(m, tmp_min_age_seconds=0)
        assert left.clean, left

"""Issue 17 item 5: a malformed line is one failed item; the batch goes on (CLI subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREDICATE = "https://slsa.dev/provenance/v1"


def run(home: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(
        STELLAKEYS_HOME=str(home),
        STELLAKEYS_PASSPHRASE="correct horse battery",
        STELLAKEYS_TEST_NOW="2030-06-01T12:00:00Z",
        PYTHONPATH=str(ROOT),
        NO_COLOR="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=home.parent,
        timeout=180,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return res.stdout


def _sign(home: Path, key: str, purl: str) -> dict[str, object]:
    out = _ok(
        run(
            home,
            "sign", "--key-id", key, "--subject", f"{purl}=sha256:{'ab' * 32}",
            "--predicate-type", PREDICATE, "--json",
            stdin=b"artifact",
        )
    )  # fmt: skip
    envelope = json.loads(out)["envelope"]
    assert isinstance(envelope, dict)
    return envelope


def test_batch_mixing_good_bad_json_wrong_key_and_unknown_anchor(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for key in ("trusted", "stranger"):
        _ok(run(home, "key", "generate", "--key-id", key))
    _ok(
        run(
            home, "anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "trusted",
            "--predicate-types", PREDICATE,
        )
    )  # fmt: skip
    good = _sign(home, "trusted", "pkg:npm/left-pad@1.0.0")
    wrong_key = _sign(home, "stranger", "pkg:npm/left-pad@1.0.0")
    no_anchor = _sign(home, "trusted", "pkg:pypi/requests@2.0.0")
    lines = [
        json.dumps(good),  # line 1: ok
        "this is not json",  # line 2: malformed
        json.dumps(wrong_key),  # line 3: signed by a key outside the anchor
        "",  # line 4: blank, skipped
        json.dumps({"envelope": good, "purl": "pkg:npm/left-pad@1.0.0"}),  # line 5: ok
        json.dumps(no_anchor),  # line 6: no anchor for pkg:pypi
        "[1, 2]",  # line 7: JSON but not an object
        json.dumps({"proof": "sha256:nothex"}),  # line 8: parsed; fails at verification
        json.dumps(good),  # line 9: ok, after the bad ones: the run went on
    ]
    batch = tmp_path / "f.jsonl"
    batch.write_text("\n".join(lines) + "\n")

    res = run(home, "verify", "--batch", str(batch), "--json")
    assert res.returncode == 1, res.stderr  # some item failed
    assert "Traceback" not in res.stderr
    *rows, last = [json.loads(line) for line in res.stdout.splitlines()]
    assert last["summary"]["total"] == 8 and last["summary"]["failed"] == 5
    assert last["summary"]["byReason"]["malformed input"] == 3  # lines 2, 7 and 8
    by_input = {r["input"]: r for r in rows}
    assert [r["input"] for r in rows] == [f"{batch}:{n}" for n in (1, 2, 3, 5, 6, 7, 8, 9)]
    assert [r["index"] for r in rows] == list(range(8))
    assert by_input[f"{batch}:1"]["ok"] is True
    assert by_input[f"{batch}:5"]["ok"] is True
    assert by_input[f"{batch}:9"]["ok"] is True
    assert by_input[f"{batch}:2"]["ok"] is False
    assert by_input[f"{batch}:2"]["error"].startswith("not JSON")
    assert by_input[f"{batch}:7"]["error"] == "expected a JSON object"
    assert by_input[f"{batch}:3"]["ok"] is False
    assert by_input[f"{batch}:6"]["ok"] is False
    assert by_input[f"{batch}:8"]["ok"] is False
    # The summary (stderr with --json) counts every item and names the bad line.
    assert "Batch verification: 8 proofs" in res.stderr
    assert f"FAILED {batch}:2: not JSON" in res.stderr

    human = run(home, "verify", "--batch", str(batch))
    assert human.returncode == 1
    assert "Batch verification: 8 proofs" in human.stdout
    assert f"FAILED {batch}:2: not JSON" in human.stdout
    assert "malformed input" in human.stdout


def test_batch_all_good_exits_zero(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _ok(run(home, "key", "generate", "--key-id", "trusted"))
    _ok(
        run(
            home, "anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "trusted",
            "--predicate-types", PREDICATE,
        )
    )  # fmt: skip
    good = _sign(home, "trusted", "pkg:npm/left-pad@1.0.0")
    batch = tmp_path / "f.jsonl"
    batch.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    res = run(home, "verify", "--batch", str(batch), "--json")
    assert res.returncode == 0, res.stderr + res.stdout
    *rows, last = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["ok"] for r in rows] == [True, True]
    assert last == {"summary": {"total": 2, "ok": 2, "failed": 0, "byReason": {}}}

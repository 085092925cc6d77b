"""The CLI end to end in a temporary home: through click's runner and as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stellakeys_cli.main import cli

PASSPHRASE = "cli-test-passphrase"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_ACTOR": "ops@example.com",
    }


@pytest.fixture
def run(env: dict[str, str]) -> Iterator[object]:
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, ok: bool = True) -> Result:
        result = runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    yield invoke


def sh(
    env: dict[str, str], *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=120,
    )


def test_runbook_rotation_through_the_cli(run, home: Path) -> None:  # type: ignore[no-untyped-def]
    run(
        "key",
        "generate",
        "--profile",
        "default",
        "--key-id",
        "key-2024-prod",
        "--algorithm",
        "SHA256-ED25519",
    )
    created = json.loads(
        run(
            "anchor",
            "create",
            "--purl-pattern",
            "pkg:npm/*",
            "--key-ids",
            "key-2024-prod",
            "--predicate-types",
            "evidence.stella/v1,reasoning.stella/v1",
            "--json",
        ).output
    )
    anchor_id = created["trustAnchorId"]
    assert created["allowedKeyids"] == ["key-2024-prod"]
    assert created["allowedPredicateTypes"] == ["evidence.stella/v1", "reasoning.stella/v1"]

    listing = run("anchor", "list").output.splitlines()
    assert listing[0].split() == ["ID", "Pattern", "Keys", "Status"]
    assert listing[1].split() == [anchor_id, "pkg:npm/*", "key-2024-prod", "active"]

    artifact = home / "artifact.txt"
    artifact.write_text("hello")
    proof = run(
        "sign",
        "--key-id",
        "key-2024-prod",
        "--input",
        str(artifact),
        "--subject",
        "pkg:npm/left-pad@1.3.0",
        "--predicate-type",
        "evidence.stella/v1",
    ).output.strip()
    assert proof.startswith("sha256:") and len(proof) == 71

    verified = json.loads(run("verify", "--proof-bundle", proof, "--json").output)
    assert verified["ok"] and verified["keyId"] == "key-2024-prod"
    assert verified["anchorId"] == anchor_id and verified["timeSource"] == "now"
    signed_at = verified["time"]

    run("key", "generate", "--profile", "default", "--key-id", "key-2025-prod")
    run("anchor", "add-key", "--anchor-id", anchor_id, "--key-id", "key-2025-prod")
    status = run("anchor", "status", "--anchor-id", anchor_id).output
    assert "Active Keys: key-2024-prod, key-2025-prod" in status
    assert "Verification Success Rate: 100%" in status
    assert "Pending Rescans: 0" in status

    run(
        "anchor",
        "revoke-key",
        "--anchor-id",
        anchor_id,
        "--key-id",
        "key-2024-prod",
        "--reason",
        "annual-rotation",
        "--effective-at",
        "NOW",
    )
    failed = run("verify", "--proof-bundle", proof, ok=False)
    assert failed.exit_code == 1 and "FAILED" in failed.output
    assert "revoked" in failed.output
    at_signing = run("verify", "--proof-bundle", proof, "--at-time", signed_at)
    assert at_signing.output.startswith("OK:") and "(asserted)" in at_signing.output

    validity = json.loads(
        run(
            "key", "check-validity", "--key-id", "key-2024-prod", "--at-time", signed_at, "--json"
        ).output
    )
    assert validity["valid"] is True

    events = json.loads(run("audit", "query", "--type", "KEY_*", "--json").output)
    assert [e["event_type"] for e in events] == [
        "KEY_REVOKED",
        "KEY_ADDED",
        "KEY_GENERATED",
        "KEY_ADDED",
        "KEY_GENERATED",
    ]
    assert all(e["actor"] == "ops@example.com" for e in events)
    assert run("audit", "verify").output.startswith("OK: ")

    warnings = run("key", "rotation-warnings").output.splitlines()
    assert warnings[0].split() == ["Key", "ID", "Profile", "Age", "Max", "Age", "Warning"]
    assert "key-2025-prod" in warnings[1] and "✓ OK" in warnings[1]


def test_rotation_warnings_table_uses_profile_policy(run, env, home: Path) -> None:  # type: ignore[no-untyped-def]
    # Both times are explicit: the keys are made on 2026-11-30 (frozen CLI clock) and judged
    # on 2027-09-30, so the ages are 10 and 10 months whatever the calendar says.
    env["STELLAKEYS_TEST_NOW"] = "2026-11-30T00:00:00Z"
    (home / "signer.yaml").write_text(
        "signer:\n"
        "  profiles:\n"
        "    default:\n"
        "      algorithm: SHA256-ED25519\n"
        "      keyStore: software://default\n"
        "      rotation: {enabled: true, maxAgeMonths: 12, warningMonths: 2}\n"
        "    pqc:\n"
        "      algorithm: ML-DSA-65\n"
        "      keyStore: software://pqc\n"
        "      rotation: {enabled: true, maxAgeMonths: 6, warningMonths: 1}\n"
    )
    run("key", "generate", "--profile", "default", "--key-id", "key-a")
    run("key", "generate", "--profile", "pqc", "--key-id", "key-b")
    rows = json.loads(
        run("key", "rotation-warnings", "--at-time", "2027-09-30T00:00:00Z", "--json").stdout
    )
    by_id = {r["keyId"]: r for r in rows}
    assert by_id["key-a"]["ageMonths"] == 10 and by_id["key-a"]["status"] == "due-soon"
    assert by_id["key-a"]["message"] == "⚠️ Rotation due in 2 months"
    assert by_id["key-b"]["status"] == "overdue" and by_id["key-b"]["algorithm"] == "ml-dsa-65"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--proof-bundle", "sha256:" + "0" * 64], "no proof sha256:"),
        (
            [
                "anchor",
                "create",
                "--purl-pattern",
                "npm/*",
                "--key-ids",
                "k",
                "--predicate-types",
                "x",
            ],
            "malformed PURL pattern",
        ),
        (["key", "check-validity", "--key-id", "k", "--at-time", "yesterday"], "invalid time"),
        (["key", "generate", "--profile", "nope", "--key-id", "k"], "unknown profile"),
        (["key", "generate", "--key-id", "k", "--algorithm", "rsa"], "unknown algorithm"),
        (["anchor", "status", "--anchor-id", "not-a-uuid"], "invalid trust anchor id"),
        (["audit", "query", "--from", "2025-13-01"], "invalid time"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    env: dict[str, str], args: list[str], message: str
) -> None:
    proc = sh(env, *args)
    assert proc.returncode == 1, proc
    err = proc.stderr.decode()
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_malformed_envelope_and_config_are_clean_errors(env: dict[str, str], home: Path) -> None:
    proc = sh(env, "verify", input=b'{"payloadType": "x", "payload": "***", "signatures": []}')
    assert proc.returncode == 1 and b"invalid base64" in proc.stderr
    (home / "signer.yaml").write_text("signer: [unclosed")
    proc = sh(env, "key", "list")
    assert proc.returncode == 1 and b"invalid YAML" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_sign_pipe_verify_as_real_processes(env: dict[str, str]) -> None:
    assert sh(env, "key", "generate", "--key-id", "my-signing-key").returncode == 0
    signed = sh(env, "sign", "--key-id", "my-signing-key", input=b"test\n")
    assert signed.returncode == 0, signed.stderr
    verified = sh(env, "verify", input=signed.stdout)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(b"OK: " + signed.stdout.strip())
    # The same pipe with the envelope itself rather than its address.
    envelope = sh(env, "sign", "--key-id", "my-signing-key", "--json", input=b"test\n")
    body = json.dumps(json.loads(envelope.stdout)["envelope"]).encode()
    assert sh(env, "verify", input=body).returncode == 0
    # A flipped payload byte fails with a reason, exit 1.
    tampered = json.loads(body)
    tampered["payload"] = "dGVzdA=="
    bad = sh(env, "verify", "--json", input=json.dumps(tampered).encode())
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False


def test_two_processes_writing_one_home_lose_nothing(env: dict[str, str], home: Path) -> None:
    script = (
        "import sys\n"
        "from stellakeys import KeyManager\n"
        "tag = sys.argv[1]\n"
        "with KeyManager.open() as km:\n"
        "    for i in range(15):\n"
        "        km.import_key(f'{tag}-{i}', km.get_key('seed').public_key_pem)\n"
    )
    assert sh(env, "key", "generate", "--key-id", "seed").returncode == 0
    full_env = {**os.environ, **env}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, tag], env=full_env)
        for tag in ("a", "b", "c")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    keys = json.loads(sh(env, "key", "list", "--json").stdout)
    assert len(keys) == 1 + 45
    audit = json.loads(sh(env, "audit", "verify", "--json").stdout)
    assert audit["ok"] and audit["events"] == 46


def test_help_does_not_import_the_library() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from stellakeys_cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.startswith(('stellakeys.', 'cryptography'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert out.stdout.strip() == b"[]"


def test_test_now_freezes_the_cli_clock_and_warns(env: dict[str, str]) -> None:
    """STELLAKEYS_TEST_NOW (test-only) is the CLI's injectable "now": keys, audit events and
    NOW all take that instant, in a real subprocess, and every command says so on stderr."""
    frozen = {**env, "STELLAKEYS_TEST_NOW": "2031-02-03T04:05:06Z"}
    made = sh(frozen, "key", "generate", "--profile", "default", "--key-id", "k-frozen")
    assert made.returncode == 0, made.stderr
    assert b"STELLAKEYS_TEST_NOW is set: the clock is frozen at 2031-02-03T04:05:06Z" in (
        made.stderr
    )
    events = sh(frozen, "audit", "query", "--type", "KEY_GENERATED", "--json")
    assert events.returncode == 0, events.stderr
    (event,) = json.loads(events.stdout)
    assert event["timestamp"].startswith("2031-02-03T04:05:06")

    bad = sh({**env, "STELLAKEYS_TEST_NOW": "tomorrow"}, "key", "list")
    assert bad.returncode == 2 and b"STELLAKEYS_TEST_NOW" in bad.stderr
    assert b"Traceback" not in bad.stderr

"""Issue 17 item 3: errors say what was wrong with the input and what to do; global options
are accepted after the subcommand. Every case runs the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOW = "2030-06-01T12:00:00Z"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(
        STELLAKEYS_HOME=str(home),
        STELLAKEYS_PASSPHRASE="correct horse battery",
        STELLAKEYS_TEST_NOW=NOW,
        PYTHONPATH=str(ROOT),
        NO_COLOR="1",
    )
    env.update(extra)
    return env


def run(
    home: Path, *args: str, stdin: bytes | None = b"", **env: str
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=stdin,
        capture_output=True,
        env=_env(home, **env),
        cwd=home,
        timeout=120,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    res = run(tmp_path, "--home", str(h), "key", "generate", "--key-id", "k1")
    assert res.returncode == 0, res.stderr
    return h


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr
    return res.stderr.strip().splitlines()[-1]


def test_proof_bundle_that_is_not_an_address_says_what_to_use(home: Path) -> None:
    res = run(home, "verify", "--proof-bundle", "hello-world")
    assert res.returncode == 2
    line = _last_line(res)
    assert "'hello-world' is not a proof address" in line
    assert "--envelope FILE" in line
    assert "not valid JSON" not in res.stderr


def test_proof_bundle_naming_a_file_suggests_envelope(home: Path) -> None:
    (home / "hello-world").write_text("{}")
    res = run(home, "verify", "--proof-bundle", "hello-world")
    assert res.returncode == 2
    assert "is a file: give it with --envelope 'hello-world'" in _last_line(res)


def test_random_stdin_is_neither_address_nor_envelope(home: Path) -> None:
    res = run(home, "verify", stdin=b"random\n")
    assert res.returncode == 2
    line = _last_line(res)
    assert "stdin is neither a sha256: proof address nor a DSSE envelope" in line
    assert "starts with 'random'" in line
    assert "Expecting value" not in res.stderr


def test_bad_signature_field_is_named(home: Path) -> None:
    envelope = {
        "payloadType": "text/plain",
        "payload": "aGk=",
        "signatures": [{"keyid": "k1", "sig": "!!!"}],
    }
    res = run(home, "verify", stdin=json.dumps(envelope).encode())
    assert res.returncode == 1
    assert _last_line(res) == "error: envelope.signatures[0].sig: invalid base64"


def test_audit_expect_head_mismatch_never_says_event_none(home: Path) -> None:
    res = run(home, "audit", "verify", "--expect-head", "deadbeef")
    assert res.returncode == 1
    assert "#None" not in res.stdout + res.stderr
    assert "head differs from the expected head" in res.stdout


@pytest.mark.parametrize(
    "placement",
    ["after", "after-equals", "before"],
)
def test_global_options_after_the_subcommand(tmp_path: Path, placement: str) -> None:
    other = tmp_path / "other-home"
    db = tmp_path / "elsewhere.db"
    url = f"sqlite:///{db}"
    if placement == "after":
        args = ["key", "generate", "--key-id", "k9", "--home", str(other), "--database-url", url]
    elif placement == "after-equals":
        args = ["key", "generate", "--key-id", "k9", f"--home={other}", f"--database-url={url}"]
    else:
        args = ["--home", str(other), "--database-url", url, "key", "generate", "--key-id", "k9"]
    (tmp_path / "unused").mkdir()
    res = run(tmp_path / "unused", *args, "--actor", "ops@example.com")
    assert res.returncode == 0, res.stderr
    assert db.exists(), "--database-url after the subcommand must be honoured"
    listed = run(tmp_path / "unused", "key", "list", "--json", "--database-url", url)
    assert listed.returncode == 0, listed.stderr
    assert [k["keyId"] for k in json.loads(listed.stdout)] == ["k9"]
    events = run(tmp_path / "unused", "audit", "query", "--json", "--database-url", url)
    assert "ops@example.com" in events.stdout


def test_db_migrate_keeps_its_own_database_url(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    res = run(tmp_path, "db", "migrate", "--database-url", f"sqlite:///{db}")
    assert res.returncode == 0, res.stderr
    assert db.exists()


def test_passphrase_prompt_has_one_colon(tmp_path: Path) -> None:
    # On a terminal the key store asks for the passphrase: the prompt must read
    # "Passphrase for software key store 'default': ", not "...'default': : ".
    master, slave = pty.openpty()
    env = _env(tmp_path / "h")
    del env["STELLAKEYS_PASSPHRASE"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stellakeys_cli", "key", "generate", "--key-id", "k1"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        cwd=tmp_path,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while b"key store" not in seen or not seen.rstrip().endswith(b":"):
            if time.monotonic() > deadline:
                break
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    seen += os.read(master, 1024)
                except OSError:
                    break
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "Passphrase for software key store 'default': " in text, text
    assert "'default': :" not in text

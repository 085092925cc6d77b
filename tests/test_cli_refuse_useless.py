"""Issue 17 item 4: the CLI refuses what can only be a mistake (subprocess tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(
    cwd: Path, *args: str, stdin: bytes = b"", home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(
        STELLAKEYS_PASSPHRASE="correct horse battery",
        STELLAKEYS_TEST_NOW="2030-06-01T12:00:00Z",
        PYTHONPATH=str(ROOT),
        NO_COLOR="1",
    )
    if home is not None:
        env["STELLAKEYS_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    assert run(tmp_path, "key", "generate", "--key-id", "k1", home=h).returncode == 0
    return h


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_anchor_with_no_predicate_type_is_refused(home: Path, value: str) -> None:
    res = run(
        home, "anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "k1",
        "--predicate-types", value, home=home,
    )  # fmt: skip
    assert res.returncode == 2
    assert "names no predicate type" in res.stderr
    listed = run(home, "anchor", "list", "--all", "--json", home=home)
    assert json.loads(listed.stdout) == [], "nothing may be written"
    # The pattern is still free for the correct anchor.
    ok = run(
        home, "anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "k1",
        "--predicate-types", "https://slsa.dev/provenance/v1", home=home,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_anchor_with_no_key_is_refused(home: Path) -> None:
    res = run(
        home, "anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "",
        "--predicate-types", "https://slsa.dev/provenance/v1", home=home,
    )  # fmt: skip
    assert res.returncode == 2
    assert "names no key" in res.stderr


def test_empty_stdin_is_not_signed(home: Path) -> None:
    res = run(home, "sign", "--key-id", "k1", stdin=b"", home=home)
    assert res.returncode == 2
    assert "nothing to sign: stdin gave no bytes" in res.stderr
    assert "--allow-empty" in res.stderr
    empty = home / "empty.bin"
    empty.write_bytes(b"")
    res = run(home, "sign", "--key-id", "k1", "--input", str(empty), home=home)
    assert res.returncode == 2
    assert f"{empty} is empty" in res.stderr
    audit = run(home, "audit", "query", "--json", home=home)
    assert "PROOF_SIGNED" not in audit.stdout.upper().replace(".", "_")


def test_allow_empty_signs_zero_bytes(home: Path) -> None:
    res = run(home, "sign", "--key-id", "k1", "--allow-empty", stdin=b"", home=home)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("sha256:")


@pytest.mark.parametrize(
    "command",
    [
        ["key", "list"],
        ["anchor", "list"],
        ["audit", "verify"],
        ["verify", "--proof-bundle", "sha256:" + "a" * 64],
        ["ceremony", "list"],
    ],
)
def test_read_only_command_on_missing_home_says_so(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "stelakeys-home"
    res = run(tmp_path, *command, home=typo)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert f"the home {typo} (from STELLAKEYS_HOME) does not exist" in line
    assert "stellaops db migrate" in line
    assert not typo.exists(), "a read-only command must not create a home"
    res = run(tmp_path, "--home", str(typo), *command)
    assert "(from --home) does not exist" in res.stderr
    assert not typo.exists()


def test_writing_commands_create_the_home(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert run(tmp_path, "db", "migrate", home=fresh).returncode == 0
    assert fresh.is_dir()
    listed = run(tmp_path, "key", "list", "--json", home=fresh)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    other = tmp_path / "other"
    assert run(tmp_path, "key", "generate", "--key-id", "k1", home=other).returncode == 0
    assert other.is_dir()

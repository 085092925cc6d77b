"""Issue 17 item 6: every command documented in docs/ exists with the options it shows, checked
by running the CLI as a subprocess, so a page cannot drift from the CLI; output conventions
(--json everywhere, human by default, NO_COLOR, shell completion)."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from stellakeys_cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_GLOBAL_WITH_VALUE = {"--home", "--config", "--database-url", "--actor"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(PYTHONPATH=str(ROOT), NO_COLOR="1")
    env.update(extra)
    return env


def _documented() -> list[tuple[str, str]]:
    """(where, command line without the program name) for every documented invocation."""
    found: list[tuple[str, str]] = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                m = re.match(r"\s*(?:\$ )?(?:stellaops|stella) (.*)", line)
                if m:
                    found.append((page.name, m.group(1).split("  #")[0].strip()))
        if page.name == "cli.md":
            for m in re.finditer(r"^\| `([a-z][^`]*)`", text, re.M):
                line = m.group(1)
                words = line.split()
                if len(words) > 1 and "\\|" in words[1]:
                    continue  # "create\|approve\|...": an alternation of subcommands
                found.append((page.name, line.replace("\\|", " ")))
    return found


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _path_and_options(line: str) -> tuple[tuple[str, ...], list[str]]:
    ctx = click.Context(cli)
    command: click.Command = cli
    path: list[str] = []
    options: list[str] = []
    tokens = _tokens(line)
    i = 0
    while i < len(tokens):
        token = tokens[i].strip("[]()")
        for part in token.split("|"):
            part = part.strip("[]()")
            if part.startswith("--"):
                options.append(part.split("=", 1)[0])
        if token in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if isinstance(command, click.Group) and not token.startswith("-"):
            sub = command.get_command(ctx, token)
            if sub is not None:
                command = sub
                path.append(token)
        i += 1
    return tuple(path), options


@functools.cache
def _help(path: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *path, "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, f"stellaops {' '.join(path)} --help: {proc.stderr}"
    return proc.stdout


DOCUMENTED = _documented()


def test_docs_show_commands() -> None:
    pages = {page for page, _ in DOCUMENTED}
    assert {"cli.md", "ceremonies.md", "feed.md", "batch.md", "trusted-time.md"} <= pages
    assert len(DOCUMENTED) > 40


@pytest.mark.parametrize(("page", "line"), DOCUMENTED, ids=[f"{p}:{ln}" for p, ln in DOCUMENTED])
def test_documented_command_exists_with_its_options(page: str, line: str) -> None:
    path, options = _path_and_options(line)
    assert path, f"{page}: {line!r} names no stellaops command"
    shown = _help(path)
    top = _help(())
    for option in options:
        assert option in shown or (option in _GLOBAL_WITH_VALUE and option in top), (
            f"{page}: `stellaops {line}` uses {option}, which `stellaops {' '.join(path)}`"
            " does not take"
        )


def _leaf_commands() -> list[tuple[str, ...]]:
    ctx = click.Context(cli)
    out: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, (*path, name))
        else:
            out.append(path)

    walk(cli, ())
    return out


#: Servers, and exports whose output is the format asked for (--format jwks|pem|sigstore-bundle).
NO_JSON = {("metrics", "serve"), ("serve",), ("anchor", "export"), ("proof", "export")}


def test_every_command_takes_json() -> None:
    missing = [
        " ".join(path)
        for path in _leaf_commands()
        if path not in NO_JSON and "--json" not in _help(path)
    ]
    assert missing == []


def test_ceremony_create_cancel_sweep_are_human_by_default(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stellakeys_cli", *args],
            capture_output=True,
            text=True,
            env=_env(
                STELLAKEYS_HOME=str(home),
                STELLAKEYS_ACTOR="admin@company.com",
                STELLAKEYS_TEST_NOW="2030-06-01T12:00:00Z",
            ),
            timeout=120,
        )

    home.mkdir()
    (home / "signer.yaml").write_text("ceremonies:\n  requireSignedApprovals: false\n")
    (home / "approvers.yaml").write_text(
        "approverGroups:\n  - name: custodians\n"
        "    members: [a@company.com, b@company.com, c@company.com]\n"
        "    operations: [key-rotation]\n"
    )
    assert run("db", "migrate").returncode == 0
    create = [
        "ceremony", "create", "--type", "key-rotation", "--subject", "Q1",
        "--payload", '{"keyId": "root-2030"}',
    ]  # fmt: skip
    human = run(*create)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("Created ceremony cer-")
    assert "state:" in human.stdout and not human.stdout.lstrip().startswith("{")
    machine = run(*create, "--json")
    cid = json.loads(machine.stdout)["ceremonyId"]
    cancelled = run("ceremony", "cancel", "--ceremony-id", cid, "--reason", "test")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"Cancelled ceremony {cid}")
    swept = run("ceremony", "sweep")
    assert swept.returncode == 0 and swept.stdout.startswith("Swept: ")
    assert json.loads(run("ceremony", "sweep", "--json").stdout).keys() == {
        "expired",
        "reminders",
    }


_COLOUR = re.compile(r"\x1b\[[0-9;]*?(?:3[0-7]|38;[0-9;]+|9[0-7])m")


def _on_a_terminal(tmp_path: Path, **env: str) -> str:
    """The batch summary's output with stdout and stderr on a pseudo-terminal."""
    import pty

    tmp_path.mkdir(parents=True)
    batch = tmp_path / "b.jsonl"
    batch.write_text("not json\n")
    home = tmp_path / "home"
    base = _env(STELLAKEYS_HOME=str(home), **env)
    base.pop("NO_COLOR", None)
    base.update(env)
    subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "db", "migrate"],
        env=base,
        capture_output=True,
        timeout=120,
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", str(batch)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=base,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 1
    return out.decode(errors="replace")


def test_colour_on_a_terminal_but_not_with_no_color(tmp_path: Path) -> None:
    coloured = _on_a_terminal(tmp_path / "a", TERM="xterm-256color")
    assert _COLOUR.search(coloured), "on a terminal the summary is coloured"
    plain = _on_a_terminal(tmp_path / "b", TERM="xterm-256color", NO_COLOR="1")
    assert "Batch verification" in plain
    assert not _COLOUR.search(plain), "NO_COLOR must switch colour off"


def test_no_escape_codes_in_a_pipe(tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text("not json\n")
    env = _env(STELLAKEYS_HOME=str(tmp_path / "home"), TERM="xterm-256color")
    env.pop("NO_COLOR")
    subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "db", "migrate"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "verify", "--batch", str(batch)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "\x1b[" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_as_documented(shell: str) -> None:
    assert f"_STELLAOPS_COMPLETE={shell}_source stellaops" in (DOCS / "cli.md").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli"],
        capture_output=True,
        text=True,
        env=_env(_STELLAOPS_COMPLETE=f"{shell}_source"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stellaops" in proc.stdout and "_STELLAOPS_COMPLETE" in proc.stdout
    done = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli"],
        capture_output=True,
        text=True,
        env=_env(_STELLAOPS_COMPLETE="bash_complete", COMP_WORDS="stellaops ke", COMP_CWORD="1"),
        timeout=120,
    )
    assert "key" in done.stdout.split()[-1] or "plain,key" in done.stdout

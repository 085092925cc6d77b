"""No input ends in an internal error: every CLI command, driven with generated arguments, exits
0, 1 (a refused operation) or 2 (a usage error) -- never 70, never a traceback (decision 0017).

The commands are found by walking click's command tree, so a new command is fuzzed without
touching this file. Runs go through ``stellakeys_cli.main.main`` (the code that turns errors
into exit codes) in-process, in click's CliRunner isolation, against a home holding a key, an
anchor and a proof. A few subprocess cases pass bytes that are not UTF-8 in argv, which only a
real process receives (Python hands them over as lone surrogates).

Nothing generated reaches the network: options that name a server (TSA, Dask, database URLs)
and ``metrics serve`` and ``serve`` are left out, generated values contain no ``/`` (so every
path is relative to an isolated working directory), and integers stay small.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stellakeys.manager import KeyManager
from stellakeys_cli.main import cli, main
from stellakeys_cli.params import MAX_ARGUMENT_CHARS, MAX_KEY_ID_CHARS

ROOT = Path(__file__).resolve().parents[1]
#: Examples per command; raise it for a deeper run (STELLAKEYS_FUZZ_EXAMPLES=200).
EXAMPLES = int(os.environ.get("STELLAKEYS_FUZZ_EXAMPLES", "12"))
# Over-long values make hypothesis warn about the size of their repr; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
PASSPHRASE = "cli-fuzz-passphrase"
#: Parameters whose values would make the CLI contact a server, or choose where state lives.
NOT_FUZZED = {"timestamp_url", "tsa_url", "dask_scheduler", "database_url", "home"}
#: Commands that do not return by themselves.
NOT_RUN = {("metrics", "serve"), ("serve",)}


def leaf_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(cli)
    found: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, (*path, name))
        elif path not in NOT_RUN:
            found.append((path, command))

    walk(cli, ())
    return found


COMMANDS = leaf_commands()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A home with a key, an anchor and a proof, so generated values can also be real ones."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    home.mkdir(mode=0o700)
    (home / "signer.yaml").write_text(yaml.safe_dump({"feed": {"keyIds": ["k1"]}}))
    saved = {k: os.environ.get(k) for k in ("STELLAKEYS_PASSPHRASE",)}
    os.environ["STELLAKEYS_PASSPHRASE"] = PASSPHRASE
    try:
        with KeyManager.open(home) as km:
            km.generate_key("k1")
            anchor = km.create_anchor("pkg:npm/*", ["k1"], ["evidence.stella/v1"])
            proof = km.sign(b'{"hello": "world"}', ["k1"], "application/json")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"home": str(home), "anchor": str(anchor.anchor_id), "proof": proof}


def plausible(world: dict[str, str]) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "k1",
            "new-key",
            world["anchor"],
            "ALL",
            world["proof"],
            world["proof"].upper(),
            "sha256:" + "0" * 64,
            "pkg:npm/*",
            "*",
            "pkg:npm/left-pad@1.0.0",
            "evidence.stella/v1",
            "NOW",
            "2024-06-15T12:00:00Z",
            "2024-06-15",
            "7d",
            "24h",
            "default",
            "pqc",
            "ed25519",
            "compromise",
            "annual-rotation",
            "{}",
            '{"keyId": "x"}',
            "-",
            "out.json",
            "state",
            "",
            " ",
        ]
    )


# Lone surrogates are what Python makes of argv bytes that are not UTF-8.
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_CHAR = st.characters(exclude_characters="/\\", exclude_categories=()) | SURROGATE
HOSTILE = st.one_of(
    st.text(ANY_CHAR, max_size=30),
    st.text(ANY_CHAR, max_size=10).map(lambda t: "sha256:" + t),
    st.text(st.characters(codec="utf-8", exclude_characters="/\\"), max_size=64).map(
        lambda t: "sha256:" + t
    ),
    st.text(ANY_CHAR, min_size=1, max_size=3).map(lambda t: t * (MAX_KEY_ID_CHARS // len(t) + 1)),
    st.sampled_from(
        [
            "\x00",
            "k1\x00",
            "sha256:\udcff",
            "\udcfe\udcff",
            "sha256:" + "é" * 64,
            "sha256:" + "0" * 65,
            "x" * (MAX_ARGUMENT_CHARS + 1),
            "é" * (MAX_KEY_ID_CHARS + 1),
            "--",
            "-x",
            "@",
            "@missing",
            "\n",
            "\t",
            "\u202e",
            "9999-99-99T99:99:99Z",
            "\uff11\uff12\uff13",  # fullwidth digits: int() accepts them, ISO 8601 does not
            "NaN",
            "1e400",
        ]
    ),
)
NO_DIGITS = st.text(st.characters(exclude_categories=("Nd",), exclude_characters="/\\"), max_size=8)


def values_for(param: click.Parameter, world: dict[str, str]) -> st.SearchStrategy[str]:
    if isinstance(param.type, click.Choice):
        return st.sampled_from([str(c) for c in param.type.choices]) | HOSTILE
    if isinstance(param.type, click.types._NumberParamTypeBase):
        # Small only: --workers 100000 would start that many processes.
        return st.sampled_from(["-1", "0", "1", "2", "x"]) | NO_DIGITS
    return plausible(world) | HOSTILE


def argv_for(
    path: tuple[str, ...], command: click.Command, world: dict[str, str]
) -> st.SearchStrategy[list[str]]:
    parts: list[st.SearchStrategy[list[str]]] = []
    actor = next(p for p in cli.params if p.name == "actor")
    for param in [actor, *command.params]:
        if param.name in NOT_FUZZED:
            continue
        if isinstance(param, click.Option):
            opt = max(param.opts, key=len)
            if param.is_flag:
                parts.append(st.sampled_from([[], [opt]]))
                continue
            pair = values_for(param, world).flatmap(
                lambda v, opt=opt: st.sampled_from([[opt, v], [f"{opt}={v}"]])
            )
            most = 2 if param.multiple else 1
            parts.append(st.lists(pair, max_size=most).map(lambda ps: [x for p in ps for x in p]))
        else:
            low, high = (0, 3) if param.nargs == -1 else (param.nargs, param.nargs)
            values = st.lists(values_for(param, world), min_size=low, max_size=high)
            parts.append(st.booleans().flatmap(lambda b, v=values: v if b else st.just([])))
    if not parts:
        return st.just(list(path))
    # The root's --actor goes before the command path, the rest after it.
    return st.tuples(*parts).map(lambda ps: [*ps[0], *path, *(x for p in ps[1:] for x in p)])


STDIN = st.one_of(
    st.just(b""),
    st.binary(max_size=80),
    st.sampled_from(
        [b"sha256:\xc3\xa9", b"sha256:\xff\xfe", b"sha256:" + b"0" * 64, b"{}", b"\x00", b"["]
    ),
)


def run_main(args: list[str], stdin: bytes, world: dict[str, str]) -> tuple[int, str]:
    env = {
        "STELLAKEYS_HOME": world["home"],
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_DEBUG": None,
        "STELLAKEYS_CONFIG": None,
        "STELLAKEYS_DATABASE_URL": None,
        "STELLAKEYS_ACTOR": None,
    }
    runner = CliRunner()
    with runner.isolation(input=stdin, env=env) as streams:
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = b"".join(s.getvalue() for s in streams[:2]).decode("utf-8", "replace")
    return code, out


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """Relative paths the commands write land here."""
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


def test_the_command_tree_is_walked() -> None:
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"verify", "sign", "key generate", "feed publish", "ceremony create"} <= paths
    assert len(paths) >= 30


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_no_generated_invocation_is_an_internal_error(
    path: tuple[str, ...], command: click.Command, world: dict[str, str], workdir: Path
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(args=argv_for(path, command, world), stdin=STDIN)
    def check(args: list[str], stdin: bytes) -> None:
        code, out = run_main(args, stdin, world)
        assert code in (0, 1, 2), (args, code, out)
        assert "Traceback" not in out and "internal error" not in out, (args, out)

    check()


# --- the cases of issue 15, and argv bytes that only a real process gets --------------------


def test_hostile_proof_addresses_and_key_ids_are_usage_errors(
    world: dict[str, str], workdir: Path
) -> None:
    cases = [
        (["verify", "--proof-bundle", "sha256:é"], "--proof-bundle"),
        (["verify", "--proof-bundle", "sha256:" + "a" * 65], "--proof-bundle"),
        (["timestamp", "list", "--proof-bundle", "sha256:\udcff"], "--proof-bundle"),
        (["key", "generate", "--key-id", "k\x00"], "--key-id"),
        (["key", "generate", "--key-id", "k" * (MAX_KEY_ID_CHARS + 1)], "--key-id"),
        (["key", "check-validity", "--key-id", "k\n1"], "--key-id"),
        (["sign", "--key-id", "k1", "--payload-type", "x" * 70000], "--payload-type"),
        (["anchor", "status", "--anchor-id=\udcff"], "--anchor-id"),
        (["--actor", "\udcfe", "key", "list"], "--actor"),
    ]
    for args, named in cases:
        code, out = run_main(args, b"", world)
        assert code == 2, (args, out)
        assert named in out and "Traceback" not in out, (args, out)
    # The address read from stdin (the issue's `stellaops verify` with sha256:<non-ASCII>).
    code, out = run_main(["verify"], "sha256:ü".encode(), world)
    assert code == 2 and "stdin" in out and "not a proof address" in out, out
    # A valid address in capitals is the same proof.
    code, out = run_main(["verify", "--proof-bundle", world["proof"].upper()], b"", world)
    assert "no proof" not in out, out


def cli_process(*argv: bytes, stdin: bytes = b"", home: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), STELLAKEYS_HOME=home)
    env.pop("STELLAKEYS_DEBUG", None)
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"stellakeys_cli", *argv],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ((b"verify", b"--proof-bundle", b"sha256:\xff"), b"after --proof-bundle"),
        ((b"verify", b"--proof-bundle=sha256:\xc3"), b"the value of --proof-bundle"),
        ((b"key", b"generate", b"--key-id", b"k\xfe\xff"), b"after --key-id"),
        ((b"--actor", b"\x80", b"key", b"list"), b"after --actor"),
        ((b"feed", b"show", b"feed-\xff.json"), b"argument 3"),
    ],
)
def test_non_utf8_argv_bytes_are_usage_errors(
    argv: tuple[bytes, ...], named: bytes, world: dict[str, str]
) -> None:
    proc = cli_process(*argv, home=world["home"])
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and b"not valid UTF-8" in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr and b"internal error" not in proc.stderr


def test_non_utf8_environment_and_stdin_in_a_process(world: dict[str, str]) -> None:
    proc = cli_process(b"verify", stdin=b"sha256:\xc3\xa9", home=world["home"])
    assert proc.returncode == 2 and b"not a proof address" in proc.stderr, proc.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT), STELLAKEYS_HOME=world["home"])
    env_bytes = {k.encode(): v.encode() for k, v in env.items()}
    env_bytes[b"STELLAKEYS_ACTOR"] = b"op\xff"
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "key", "list"],
        env=env_bytes,  # type: ignore[arg-type]  # bytes environments are valid on POSIX
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"STELLAKEYS_ACTOR" in proc.stderr and b"Traceback" not in proc.stderr

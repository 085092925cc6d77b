"""Entry point. Subcommand modules are imported only when invoked, so ``--help`` is fast and
a typo does not pay for loading the crypto stack."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

# name -> (module, attribute, one-line help). Help text lives here so listing commands never
# imports them.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "key": ("stellakeys_cli.key", "key", "Generate, import and inspect signing keys."),
    "anchor": ("stellakeys_cli.anchor", "anchor", "Manage trust anchors and their keys."),
    "sign": ("stellakeys_cli.proofs", "sign", "Sign a payload into a DSSE proof."),
    "verify": ("stellakeys_cli.proofs", "verify", "Verify a proof against trust anchors."),
    "proof": (
        "stellakeys_cli.proof",
        "proof",
        "Export stored proofs for other tools (Sigstore bundle).",
    ),
    "audit": ("stellakeys_cli.audit", "audit", "Query and verify the audit log."),
    "timestamp": (
        "stellakeys_cli.timestamp",
        "timestamp",
        "RFC 3161 timestamps (trusted time) for stored proofs.",
    ),
    "db": ("stellakeys_cli.db", "db", "Store schema: migrate, status."),
    "metrics": ("stellakeys_cli.metrics", "metrics", "Prometheus metrics: serve or show."),
    "feed": ("stellakeys_cli.feed", "feed", "Publish and consume the signed key-material feed."),
    "ceremony": (
        "stellakeys_cli.ceremony",
        "ceremony",
        "Dual-control ceremonies: create, approve, execute.",
    ),
    "auth": ("stellakeys_cli.auth", "auth", "Approver identities and signing keys."),
    "serve": ("stellakeys_cli.serve", "serve", "Serve the signer HTTP API (server extra)."),
    "doctor": (
        "stellakeys_cli.doctor",
        "doctor",
        "Find and repair what crashes left: unfinished key intents, orphan keys, temp files.",
    ),
}


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Every invocation passes here first, whatever the command: hostile bytes are a usage
        # error naming the argument before any command sees them (stellakeys_cli/params.py).
        from stellakeys_cli.params import check_invocation

        check_invocation(args)
        return super().parse_args(ctx, _globals_first(self, ctx, args))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module, attr, _ = self._lazy[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self._lazy[name][2]) for name in sorted(self._lazy)]
        rows += [
            (name, (cmd.get_short_help_str(60)))
            for name in super().list_commands(ctx)
            if (cmd := super().get_command(ctx, name)) is not None and name not in self._lazy
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


#: Options of the top-level group, accepted after the subcommand too (issue 17: the schema
#: error tells the user to run ``stellaops db migrate --database-url <url>``, and people write
#: ``stellaops key list --home X``).
_GLOBAL_OPTIONS = ("--home", "--config", "--database-url", "--actor", "--max-staleness")


def _globals_first(group: click.Group, ctx: click.Context, args: list[str]) -> list[str]:
    """``args`` with global options found after the subcommand moved in front of it.

    An option is moved only where the command it follows does not define the same name (``db
    migrate --database-url`` keeps its own), and nothing after ``--`` is touched.
    """
    front: list[str] = []
    rest = list(args)
    command: click.Command | None = group
    i = 0
    # Walk the command path: option tokens (and global options' values) up to each name.
    path_end = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            i += 2 if arg in _GLOBAL_OPTIONS else 1
            continue
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, arg)
        if sub is None:
            return args
        command = sub
        i += 1
        path_end = i
    if command is None or command is group:
        return args
    own = {opt for param in command.params for opt in getattr(param, "opts", ())}
    moved = [o for o in _GLOBAL_OPTIONS if o not in own]
    out = rest[:path_end]
    i = path_end
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            out.extend(rest[i:])
            break
        name = arg.split("=", 1)[0]
        if name in moved:
            if "=" in arg:
                front.append(arg)
                i += 1
            else:
                front.extend(rest[i : i + 2])
                i += 2
            continue
        out.append(arg)
        i += 1
    return front + out


@click.group(
    cls=LazyGroup, lazy=_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--home",
    envvar="STELLAKEYS_HOME",
    type=click.Path(file_okay=False),
    help="State directory (default: $STELLAKEYS_HOME or the user data dir).",
)
@click.option(
    "--config",
    "config_path",
    envvar="STELLAKEYS_CONFIG",
    type=click.Path(dir_okay=False),
    help="signer.yaml (default: <home>/signer.yaml).",
)
@click.option(
    "--database-url",
    envvar="STELLAKEYS_DATABASE_URL",
    help="postgresql://... to use PostgreSQL instead of the embedded SQLite store.",
)
@click.option("--actor", envvar="STELLAKEYS_ACTOR", help="Who is acting, for the audit log.")
@click.option(
    "--max-staleness",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="PostgreSQL only: let verification miss a commit for at most SECONDS (LISTEN/NOTIFY)"
    " instead of asking the database every time (default: strict; $STELLAKEYS_MAX_STALENESS).",
)
@click.version_option(package_name="stellakeys")
@click.pass_context
def cli(
    ctx: click.Context,
    home: str | None,
    config_path: str | None,
    database_url: str | None,
    actor: str | None,
    max_staleness: float | None,
) -> None:
    """stellakeys: signing keys, trust anchors, temporal verification, audited."""
    from stellakeys_cli.context import CliState

    ctx.obj = CliState(home, config_path, database_url, actor, max_staleness=max_staleness)
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: errors become one line on stderr and a non-zero exit, never a traceback."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "stellaops"
    if prog not in ("stellaops", "stella"):
        prog = "stellaops"
    try:
        rv = cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:
        # The file system refused (no such directory, permission, a name too long, disk
        # full): the environment or the path given, not a bug -- one line, like other errors.
        if os.environ.get("STELLAKEYS_DEBUG"):
            raise
        where = f"{_shown_path(exc.filename)}: " if exc.filename is not None else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # the one place that turns errors into exit codes
        from stellakeys.errors import StellaKeysError

        if os.environ.get("STELLAKEYS_DEBUG"):
            raise
        if isinstance(exc, StellaKeysError):
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (set STELLAKEYS_DEBUG=1 for a trace)",
            err=True,
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


def _shown_path(name: object) -> str:
    from stellakeys_cli.params import shown

    text = os.fsdecode(name) if isinstance(name, str | bytes) else str(name)
    return shown(text, 120)

"""Per-invocation state shared by commands: settings and a lazily opened KeyManager."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.collector import settled

if TYPE_CHECKING:
    from stellakeys.clock import Clock
    from stellakeys.manager import KeyManager
    from stellakeys.store_verifier import StoreVerifier
    from stellakeys.timestamp import TimestampVerifier
    from stellakeys.verifier import Verifier

#: Test-only: an ISO 8601 instant at which every command's clock is frozen. The CLI is the one
#: place where tests cannot hand a ``Clock`` in (subprocesses, ``CliRunner``), and a test that
#: mixes the wall clock with a fixed date breaks as the calendar moves (issue 13). Never set it
#: in production: each command warns on stderr while it is set.
TEST_NOW_ENV = "STELLAKEYS_TEST_NOW"


def cli_clock() -> Clock:
    """This invocation's clock: the system clock, or frozen under ``STELLAKEYS_TEST_NOW``."""
    from stellakeys.clock import FrozenClock, SystemClock

    text = os.environ.get(TEST_NOW_ENV)
    if not text:
        return SystemClock()
    from stellakeys.errors import MalformedTimeError
    from stellakeys.times import format_time, parse_time

    try:
        at = parse_time(text)
    except MalformedTimeError as exc:
        raise click.UsageError(f"{TEST_NOW_ENV}: {exc}") from None
    click.echo(
        f"warning: {TEST_NOW_ENV} is set: the clock is frozen at {format_time(at)} "
        "(test-only; unset it for real use)",
        err=True,
    )
    return FrozenClock(at)


#: Commands that only read: on a home that does not exist they refuse instead of creating it
#: (only commands that write create a home).
READ_ONLY_COMMANDS = frozenset(
    {
        ("key", "list"),
        ("key", "check-validity"),
        ("key", "rotation-warnings"),
        ("anchor", "list"),
        ("anchor", "status"),
        ("audit", "query"),
        ("audit", "verify"),
        ("auth", "keys", "list"),
        ("auth", "keys", "info"),
        ("ceremony", "list"),
        ("ceremony", "status"),
        ("ceremony", "statement"),
        ("ceremony", "policy"),
        ("metrics", "show"),
        ("metrics", "serve"),
        ("timestamp", "list"),
        ("verify",),
        ("doctor",),
    }
)


class CliState:
    def __init__(
        self,
        home: str | None,
        config_path: str | None,
        database_url: str | None,
        actor: str | None,
        *,
        verifier: Verifier | None = None,
        clock: Clock | None = None,
        max_staleness: float | None = None,
    ) -> None:
        """``verifier``: verify with it rather than the store's (``verify --feed``: a
        verifier built from the feed alone); ``clock`` shares an invocation's clock."""
        self.home = home
        self.config_path = config_path
        self.database_url = database_url
        self.actor = actor
        self.max_staleness = max_staleness
        self._manager: KeyManager | None = None
        self._verifying: StoreVerifier | None = None
        self._clock: Clock | None = clock
        self._verifier = verifier

    def with_verifier(self, verifier: Verifier) -> CliState:
        """A state for this invocation that verifies with ``verifier`` and opens no store."""
        return CliState(
            self.home,
            self.config_path,
            self.database_url,
            self.actor,
            verifier=verifier,
            clock=self.clock,
            max_staleness=self.max_staleness,
        )

    def given_verifier(self) -> Verifier | None:
        """The verifier this state was built with (None: verify with the store's)."""
        return self._verifier

    @property
    def clock(self) -> Clock:
        """Read once per invocation, so a frozen test clock warns once."""
        if self._clock is None:
            self._clock = cli_clock()
        return self._clock

    def manager(self, *, timestamp_verifier: TimestampVerifier | None = None) -> KeyManager:
        """The store's manager, opened on first use with its collaborators
        (``timestamp_verifier``: ``--tsa-root`` files; default: the configuration's)."""
        if self._manager is None:
            from stellakeys.manager import KeyManager

            self._refuse_missing_home()

            prompt = _prompt_secret if sys.stdin.isatty() else None
            self._manager = KeyManager.open(
                self.home,
                config_path=self.config_path,
                database_url=self.database_url,
                actor=self.actor,
                clock=self.clock,
                prompt=prompt,
                timestamp_verifier=timestamp_verifier,
                max_staleness=self.max_staleness,
            )
            settled()
        return self._manager

    def verifying(self, *, timestamp_verifier: TimestampVerifier | None = None) -> StoreVerifier:
        """The store opened for verification only: no key store, no ceremony code, no
        facade (``stellaops verify`` imports and opens just this; issue 20)."""
        if self._verifying is None:
            from stellakeys.config import load_settings
            from stellakeys.store_verifier import StoreVerifier

            self._refuse_missing_home()
            settings = load_settings(
                self.home, self.config_path, self.database_url, self.actor, self.max_staleness
            )
            self._verifying = StoreVerifier.open(settings, timestamp_verifier=timestamp_verifier)
            settled()
        return self._verifying

    def _refuse_missing_home(self) -> None:
        """A read-only command on a home that does not exist says so, rather than creating an
        empty one and reporting "no proof" (issue 17: a mistyped STELLAKEYS_HOME)."""
        ctx = click.get_current_context(silent=True)
        if ctx is None:
            return
        words = tuple(ctx.command_path.split()[1:])
        if words not in READ_ONLY_COMMANDS:
            return
        from stellakeys.config import ENV_HOME, load_settings, resolve_home

        home = resolve_home(self.home)
        if home.exists():
            return
        settings = load_settings(self.home, self.config_path, self.database_url, self.actor)
        if settings.database_url is not None:
            return  # the state is in that database; the home only holds software keys
        source = ctx.find_root().get_parameter_source("home")
        if source is click.core.ParameterSource.ENVIRONMENT:
            origin = ENV_HOME
        elif self.home is not None:
            origin = "--home"
        else:
            origin = "the default location"
        raise click.ClickException(
            f"the home {home} (from {origin}) does not exist, so there is nothing to read:"
            " check the path, or create a home with `stellaops db migrate` (or `stellaops key"
            " generate`) using the same --home / STELLAKEYS_HOME"
        )

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None
        if self._verifying is not None:
            self._verifying.close()
            self._verifying = None


def _prompt_secret(text: str) -> str:
    # The key store's text ends in ": " already; click.prompt adds its own suffix.
    value: str = click.prompt(text.rstrip().rstrip(":"), hide_input=True, err=True)
    return value


def state() -> CliState:
    obj = click.get_current_context().find_object(CliState)
    assert obj is not None
    return obj


def manager(*, timestamp_verifier: TimestampVerifier | None = None) -> KeyManager:
    return state().manager(timestamp_verifier=timestamp_verifier)


def read_input(path: str) -> bytes:
    """The bytes of a file argument, or of stdin for ``-``; one line naming the file if it
    cannot be read."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


def now() -> datetime:
    """The current time of this invocation (frozen under ``STELLAKEYS_TEST_NOW``)."""
    return state().clock.now()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned with two spaces, like the runbook's examples."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for line in (headers, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def split_list(value: str | None) -> list[str]:
    """``a,b`` and repeated flags both give lists; empty items are dropped."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_time_option(value: str | None, *, allow_now: bool = False) -> Any:
    if value is None:
        return None
    from stellakeys.times import parse_time

    now = state().clock.now() if allow_now else None
    return parse_time(value, now=now)

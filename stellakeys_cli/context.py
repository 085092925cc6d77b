"""Per-invocation state shared by commands: settings and a lazily opened KeyManager."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from stellakeys.manager import KeyManager


class CliState:
    def __init__(
        self,
        home: str | None,
        config_path: str | None,
        database_url: str | None,
        actor: str | None,
    ) -> None:
        self.home = home
        self.config_path = config_path
        self.database_url = database_url
        self.actor = actor
        self._manager: KeyManager | None = None

    def manager(self) -> KeyManager:
        if self._manager is None:
            from stellakeys.manager import KeyManager

            prompt = _prompt_secret if sys.stdin.isatty() else None
            self._manager = KeyManager.open(
                self.home,
                config_path=self.config_path,
                database_url=self.database_url,
                actor=self.actor,
                prompt=prompt,
            )
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _prompt_secret(text: str) -> str:
    value: str = click.prompt(text, hide_input=True, err=True)
    return value


def state() -> CliState:
    obj = click.get_current_context().find_object(CliState)
    assert obj is not None
    return obj


def manager() -> KeyManager:
    return state().manager()


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

    now = manager().clock.now() if allow_now else None
    return parse_time(value, now=now)

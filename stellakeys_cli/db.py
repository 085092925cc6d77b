"""``stellaops db migrate`` and ``stellaops db status``: the schema of the store.

PostgreSQL schemas change only through ``db migrate`` (a shared database should not be altered
as a side effect of a service starting); the embedded SQLite store migrates itself when opened,
and ``db migrate`` does the same thing explicitly, so one deployment script fits both.
Neither command opens a KeyManager: that would refuse an outdated PostgreSQL schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.context import emit_json, json_option, state

if TYPE_CHECKING:
    from stellakeys.config import Settings

_URL_HELP = "postgresql://... (overrides the global --database-url and STELLAKEYS_DATABASE_URL)."


def _settings(database_url: str | None) -> Settings:
    from stellakeys.config import load_settings

    st = state()
    return load_settings(st.home, st.config_path, database_url or st.database_url, st.actor)


def _target(database_url: str | None) -> tuple[str, str | Path]:
    """("postgres", url) or ("sqlite", path), resolved like every other command."""
    from stellakeys.errors import ConfigError

    settings = _settings(database_url)
    url = settings.database_url
    if url is None:
        from stellakeys.storage.sqlite import DB_FILENAME

        return "sqlite", settings.home / DB_FILENAME
    if url.startswith("sqlite:"):
        return "sqlite", Path(url.removeprefix("sqlite:///").removeprefix("sqlite:"))
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres", url
    raise ConfigError(f"unsupported database URL {url.split(':', 1)[0]}:... (postgresql or sqlite)")


def _require_postgres() -> None:
    """A clear error, as open_store gives, when the 'postgres' extra is not installed."""
    from stellakeys.errors import ConfigError

    try:
        import stellakeys.storage.postgres  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"PostgreSQL support needs the 'postgres' extra: pip install 'stellakeys[postgres]'"
            f" ({exc})"
        ) from None


@click.group()
def db() -> None:
    """Create or upgrade the store's schema."""


@db.command("migrate")
@click.option("--database-url", help=_URL_HELP)
@json_option
def migrate(database_url: str | None, as_json: bool) -> None:
    """Apply the missing schema migrations (safe to run twice, and from two hosts at once)."""
    kind, where = _target(database_url)
    if kind == "postgres":
        _require_postgres()
        from stellakeys.storage.postgres import migrate_url, redact_url

        result = migrate_url(str(where))
        shown = redact_url(str(where))
        previous, current, applied = result.previous, result.current, list(result.applied)
    else:
        from stellakeys.storage.sqlite import SqliteStore, load_migrations

        path = Path(where)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with SqliteStore(path, migrate=False) as store:
            previous = store.schema_version()
        with SqliteStore(path) as store:  # applies what is missing
            current = store.schema_version()
        applied = [f"{m.version:04d}_{m.name}" for m in load_migrations() if m.version > previous]
        shown = str(path)
    policy = _record_policy(_settings(database_url))
    if as_json:
        emit_json(
            {
                "backend": kind,
                "database": shown,
                "previousVersion": previous,
                "version": current,
                "applied": applied,
                "ceremonyPolicy": policy,
            }
        )
        return
    if applied:
        click.echo(f"{shown}: schema version {previous} -> {current}")
        for name in applied:
            click.echo(f"  applied {name}")
    else:
        click.echo(f"{shown}: schema version {current}, up to date")
    if policy is not None:
        verb = "recorded" if policy["recorded"] else "unchanged"
        click.echo(f"ceremony policy {verb}: version {policy['version']}, {policy['digest']}")
        for text in policy["notStrictened"]:
            click.echo(f"  kept the store's stricter rule: {text}")


def _record_policy(settings: Settings) -> dict[str, Any] | None:
    """Record the ``ceremonies`` section of the configuration as the store's dual-control
    policy (store initialisation), made stricter by what the store already has: migrating
    never weakens it (decision 0015). None when the configuration has no such section."""
    if settings.document.get("ceremonies") is None:
        return None
    from stellakeys.ceremony.config import CeremonyConfig
    from stellakeys.ceremony.policy import CeremonyPolicy
    from stellakeys.ceremony.policy_store import record_policy, stored_policy
    from stellakeys.clock import SystemClock
    from stellakeys.storage import open_store

    configured = CeremonyPolicy.from_config(
        CeremonyConfig.from_document(settings.document, settings.home)
    )
    store = open_store(settings)
    try:
        with store.transaction() as tx:
            before = stored_policy(tx).policy
            merged = configured if before is None else before.stricter(configured)
            done = record_policy(tx, merged, settings.actor, SystemClock().now())
            version = stored_policy(tx).version
    finally:
        store.close()
    return {
        "recorded": done is not None,
        "version": version,
        "digest": merged.digest,
        "notStrictened": configured.weakenings(before) if before is not None else [],
    }


@db.command("status")
@click.option("--database-url", help=_URL_HELP)
@json_option
def status(database_url: str | None, as_json: bool) -> None:
    """Show the schema version; exit 1 when `db migrate` is needed."""
    kind, where = _target(database_url)
    current: int | None
    if kind == "postgres":
        _require_postgres()
        from stellakeys.storage.postgres import redact_url, url_schema_version

        current, latest = url_schema_version(str(where))
        shown = redact_url(str(where))
    else:
        import sqlite3

        from stellakeys.storage.sqlite import load_migrations

        latest = load_migrations()[-1].version
        path = Path(where)
        shown = str(path)
        current = None
        if path.exists():
            # Read-only look: opening a SqliteStore would migrate it.
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
            except sqlite3.OperationalError:
                current = None
            finally:
                conn.close()
    up_to_date = current == latest
    if as_json:
        emit_json(
            {
                "backend": kind,
                "database": shown,
                "version": current,
                "latest": latest,
                "upToDate": up_to_date,
            }
        )
    elif current is None:
        click.echo(f"{shown}: no stellakeys schema (latest {latest}); run stellaops db migrate")
    elif current < latest:
        click.echo(f"{shown}: schema version {current} of {latest}; run stellaops db migrate")
    elif current > latest:
        click.echo(f"{shown}: schema version {current} is newer than {latest}: upgrade stellakeys")
    else:
        click.echo(f"{shown}: schema version {current}, up to date")
    if not up_to_date:
        click.get_current_context().exit(1)

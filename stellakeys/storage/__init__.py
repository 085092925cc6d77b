"""Storage adapters behind the ports of :mod:`stellakeys.storage.ports`.

``open_store`` picks the adapter from the settings: PostgreSQL for a ``postgresql://`` URL
(imported only then, so ``import stellakeys`` never imports psycopg), else SQLite in the home.
``max_staleness`` and ``database.listenUrl`` / ``database.pooler`` apply to PostgreSQL only:
SQLite's change token is read from shared memory, with no round trip to save.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stellakeys.errors import ConfigError

if TYPE_CHECKING:
    from stellakeys.config import Settings
    from stellakeys.storage.ports import Store

__all__ = ["open_store"]


def open_store(settings: Settings) -> Store:
    url = settings.database_url
    if url is None or url.startswith("sqlite:"):
        from stellakeys.storage.sqlite import SqliteStore

        if url is not None:
            from pathlib import Path

            return SqliteStore(Path(url.removeprefix("sqlite:///").removeprefix("sqlite:")))
        return SqliteStore.open_home(settings.home)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from stellakeys.storage.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"PostgreSQL support needs the 'postgres' extra: pip install 'stellakeys[postgres]'"
                f" ({exc})"
            ) from None
        db = settings.document.get("database") or {}
        store: Store = PostgresStore.connect(
            url,
            max_staleness=settings.max_staleness,
            listen_url=db.get("listenUrl"),
            pooler=db.get("pooler"),
        )
        return store
    raise ConfigError(f"unsupported database URL {url.split(':', 1)[0]}:... (postgresql or sqlite)")

"""Schema migrations shared by the SQL adapters: the file format, loading, numbering checks.

A migration is a numbered SQL file ``migrations/<dialect>/NNNN_name.sql``. Both adapters
load them the same way and refuse gaps, duplicates and a database newer than the code; only
*applying* them is dialect-specific (SQLite: statement by statement inside ``BEGIN
IMMEDIATE``; PostgreSQL: the whole file as one simple query under an advisory lock).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from stellakeys.errors import StorageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["Migration", "check_not_newer", "load_migrations", "packaged_migrations"]

_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


@attrs.frozen
class Migration:
    """One numbered schema change, ``NNNN_name.sql``."""

    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The file split into statements, using SQLite's own notion of a complete one (so
        semicolons inside strings and trigger bodies are handled)."""
        out: list[str] = []
        start = 0
        for match in re.finditer(";", self.sql):
            chunk = self.sql[start : match.end()]
            if sqlite3.complete_statement(chunk):
                out.append(chunk.strip())
                start = match.end()
        rest = "\n".join(
            line
            for line in self.sql[start:].splitlines()
            if line.strip() and not line.strip().startswith("--")
        )
        if rest:
            raise StorageError(f"migration {self.version:04d}_{self.name}: incomplete statement")
        return out


def load_migrations(directory: Traversable | Path | None = None) -> tuple[Migration, ...]:
    """The migrations in ``directory`` (default: the packaged ``migrations/sqlite``), in
    order. Versions must run 1, 2, 3, ... without gaps or duplicates."""
    if directory is None:
        return packaged_migrations("sqlite")
    found: list[Migration] = []
    for entry in directory.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            text = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), text))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StorageError(
                f"schema migrations must be numbered 1, 2, 3, ...: found {migration.version:04d}"
                f" where {expected:04d} was expected"
            )
    return tuple(found)


@functools.cache
def packaged_migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations shipped for ``dialect`` (``"sqlite"`` or ``"postgres"``), in order."""
    root: Traversable | Path = Path(__file__).parent / "migrations" / dialect
    if not root.is_dir():
        # Installed as a zip (or another loader without files): ask the loader. A package on
        # disk reads its directory directly, so opening a store does not import the
        # importlib.resources machinery (issue 20: CLI start-up).
        import importlib.resources

        root = importlib.resources.files("stellakeys.storage").joinpath("migrations", dialect)
    return load_migrations(root)


def check_not_newer(current: int, latest: int, database: str = "database") -> None:
    """Refuse a schema written by a newer stellakeys: this code would misread it."""
    if current > latest:
        raise StorageError(
            f"the {database} schema is version {current}, newer than this stellakeys knows"
            f" ({latest}): upgrade stellakeys"
        )

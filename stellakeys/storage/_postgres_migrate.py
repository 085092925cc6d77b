"""Schema migrations of the PostgreSQL adapter: :func:`migrate` and the version check.
Apart from :mod:`stellakeys.storage.postgres` to keep modules under 600 lines; that module
re-exports everything here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
import psycopg

from stellakeys.errors import StorageError
from stellakeys.storage._migrations import Migration, check_not_newer, packaged_migrations
from stellakeys.storage._postgres_sql import storage_error as _storage_error

__all__ = [
    "MIGRATION_LOCK_KEY",
    "MigrationResult",
    "check_schema",
    "load_postgres_migrations",
    "migrate",
    "schema_version",
]

Conn = psycopg.Connection[tuple[Any, ...]]

#: ``pg_advisory_xact_lock`` key of the migrator ("stlkmigr" in ASCII). Only migrators take
#: it; the data itself is guarded by the store_state row lock.
MIGRATION_LOCK_KEY: Final = 0x73746C6B6D696772


def load_postgres_migrations() -> tuple[Migration, ...]:
    """The packaged ``migrations/postgres/NNNN_name.sql`` files, in order."""
    return packaged_migrations("postgres")


@attrs.frozen
class MigrationResult:
    previous: int
    current: int
    applied: tuple[str, ...]


def schema_version(conn: Conn) -> int | None:
    """The highest applied migration, or None when there is no stellakeys schema at all."""
    row = conn.execute("SELECT to_regclass('signer.schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM signer.schema_migrations").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def migrate(conn: Conn, migrations: Sequence[Migration] | None = None) -> MigrationResult:
    """Apply the missing migrations, all in one transaction, and report what was done.

    Safe to run again (a no-op) and from several processes or hosts at once: the migrator
    takes ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)`` before it even creates the schema, so a
    second migrator waits, then finds the work done. Once the schema exists it also locks
    ``signer.store_state`` in EXCLUSIVE mode, so running writers finish first and new ones wait
    for the new schema (rather than deadlocking against the DDL). PostgreSQL DDL is
    transactional: a failing migration leaves nothing of itself behind.

    ``conn`` must be in autocommit mode, outside a transaction."""
    migrations = load_postgres_migrations() if migrations is None else tuple(migrations)
    latest = migrations[-1].version if migrations else 0
    doing = "schema check"
    try:
        # Lock-free fast path: an up-to-date database needs no privileges beyond reading.
        current = schema_version(conn)
        if current is not None and current >= latest:
            check_not_newer(current, latest, "PostgreSQL")
            return MigrationResult(current, current, ())
        doing = "schema migration"
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE SCHEMA IF NOT EXISTS signer;"
                " CREATE TABLE IF NOT EXISTS signer.schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT to_regclass('signer.store_state') IS NOT NULL").fetchone()
            if row is not None and row[0]:
                conn.execute("LOCK TABLE signer.store_state IN EXCLUSIVE MODE")
            applied = {
                int(r[0]) for r in conn.execute("SELECT version FROM signer.schema_migrations")
            }
            previous = max(applied, default=0)
            check_not_newer(previous, latest, "PostgreSQL")
            done: list[str] = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                doing = f"schema migration {migration.version:04d}_{migration.name}"
                # No parameters: psycopg sends the file as one simple query, so it may hold
                # many statements and dollar-quoted function bodies (and % is not special).
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    "INSERT INTO signer.schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                done.append(f"{migration.version:04d}_{migration.name}")
    except psycopg.Error as exc:
        raise _storage_error(exc, doing) from exc
    return MigrationResult(previous, latest, tuple(done))


def check_schema(conn: Conn, display_url: str) -> int:
    """The schema version of an opened store's database; StorageError asking for
    ``stellaops db migrate`` when it is missing or older than this code."""
    latest = load_postgres_migrations()[-1].version
    try:
        current = schema_version(conn)
    except psycopg.Error as exc:
        raise _storage_error(exc, "schema check") from exc
    if current is None:
        raise StorageError(
            f"{display_url} has no stellakeys schema yet: run"
            " `stellaops db migrate --database-url <url>` first"
        )
    check_not_newer(current, latest, "PostgreSQL")
    if current < latest:
        raise StorageError(
            f"the PostgreSQL schema at {display_url} is version {current}; this stellakeys"
            f" needs {latest}: run `stellaops db migrate --database-url <url>`"
        )
    return current

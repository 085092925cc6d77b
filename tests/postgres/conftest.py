"""Fixtures for the PostgreSQL adapter: one throwaway server per test session (per xdist
worker), started here with initdb + pg_ctl (tests/postgres/pg_server.py). Missing PostgreSQL
binaries or psycopg fail the tests with what to install; nothing is skipped."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from pg_server import MISSING, PgBouncer, PostgresServer, find_bin_dir, truncate

_names = itertools.count()

# Data tables in an order TRUNCATE accepts. signer.store_state keeps its row (and counter).


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    if find_bin_dir() is None:
        pytest.fail(MISSING)
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc}: pip install -e '.[test]' (psycopg and psycopg-pool, 'postgres' extra)")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_url(pg_server: PostgresServer) -> str:
    """A new, empty database (no schema)."""
    return pg_server.create_database(f"fresh_{os.getpid()}_{next(_names)}")


@pytest.fixture(scope="module")
def migrated_url(pg_server: PostgresServer) -> str:
    """A database with the stellakeys schema, shared by the tests of one module."""
    from stellakeys.storage.postgres import PostgresStore

    url = pg_server.create_database(f"module_{os.getpid()}_{next(_names)}")
    PostgresStore.connect(url, migrate=True).close()
    return url


@pytest.fixture
def clean_url(migrated_url: str) -> str:
    """The module's migrated database, emptied for this test."""
    truncate(migrated_url)
    return migrated_url


@pytest.fixture(scope="module")
def pgbouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """Debian's pgbouncer in transaction pooling mode in front of the session's server: one
    per test module, so client connections a module leaves open (stores a test abandons on
    purpose) cannot pile up in one long-lived bouncer over a whole suite run (a full run once
    saw connects through it time out late in the run)."""
    bouncer = PgBouncer(pg_server)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pgbouncer_each(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """A fresh PgBouncer for one test (the storage conformance suite): a test that leaves a
    transaction open on purpose (rollback paths, refused writes) then cannot hold one of the
    pool's server connections for the tests after it, which a full serial run showed."""
    bouncer = PgBouncer(pg_server)
    try:
        yield bouncer
    finally:
        bouncer.stop()

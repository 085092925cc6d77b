"""The PostgreSQL adapter: the storage conformance suite against a real server, directly and
through PgBouncer in transaction pooling mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_server import PgBouncer
from storage_conformance import CeremonyStorageConformance, StoreConformance

from stellakeys.storage.postgres import PostgresStore


@pytest.fixture(params=["direct", "pgbouncer"])
def store_url(request: pytest.FixtureRequest, clean_url: str) -> tuple[str, str | None]:
    """(URL, pooler): the database itself, or PgBouncer (pool_mode = transaction) before it."""
    if request.param == "direct":
        return clean_url, None
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer_each")
    return bouncer.url_for(clean_url), "transaction"


class TestPostgresStore(StoreConformance, CeremonyStorageConformance):
    @pytest.fixture
    def store(self, store_url: tuple[str, str | None]) -> Iterator[PostgresStore]:
        url, pooler = store_url
        store = PostgresStore.connect(url, pooler=pooler)
        yield store
        store.close()

"""The PostgreSQL adapter: the storage conformance suite against a real server, directly and
through PgBouncer in transaction pooling mode."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import psycopg
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

    def tamper_history(
        self,
        store: PostgresStore,  # type: ignore[override]
        anchor_id: uuid.UUID,
        key_id: str,
        column: str,
        value: datetime | str | None,
    ) -> None:
        # An insider's psql session on the store's database: guards off, one UPDATE.
        with psycopg.connect(store._url) as conn:
            conn.execute("ALTER TABLE signer.key_history DISABLE TRIGGER USER")
            changed = conn.execute(
                f"UPDATE signer.key_history SET {column} = %s WHERE anchor_id = %s AND key_id = %s",
                (value, anchor_id, key_id),
            ).rowcount
            conn.execute("ALTER TABLE signer.key_history ENABLE TRIGGER USER")
        assert changed == 1

"""The PostgreSQL adapter: the storage conformance suite against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from storage_conformance import CeremonyStorageConformance, StoreConformance

from stellakeys.storage.postgres import PostgresStore


class TestPostgresStore(StoreConformance, CeremonyStorageConformance):
    @pytest.fixture
    def store(self, clean_url: str) -> Iterator[PostgresStore]:
        store = PostgresStore.connect(clean_url)
        yield store
        store.close()

"""The in-memory adapter against the storage conformance suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from storage_conformance import StoreConformance

from stellakeys.storage.memory import MemoryStore


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()

"""The in-memory adapter against the storage conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import attrs
import pytest
from storage_conformance import StoreConformance

import stellakeys.storage._codec as codec
from stellakeys.storage.memory import MemoryStore


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()

    def tamper_history(
        self,
        store: MemoryStore,  # type: ignore[override]
        anchor_id: uuid.UUID,
        key_id: str,
        column: str,
        value: datetime | str | None,
    ) -> None:
        # The committed state's rows, replaced in place of a write through the port.
        position = codec.HISTORY_COLUMNS.replace(" ", "").split(",").index(column)
        if isinstance(value, datetime):
            value = codec.to_micros(value)
        state = store._state
        rows = tuple(
            (*r[:position], value, *r[position + 1 :]) if r[2] == key_id else r
            for r in state.history[str(anchor_id)]
        )
        store._state = attrs.evolve(state, history={**state.history, str(anchor_id): rows})

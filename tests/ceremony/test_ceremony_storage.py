"""The ceremony part of the storage conformance suite, on the memory and SQLite adapters
(the PostgreSQL module subclasses CeremonyStorageConformance the same way)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_conformance import CeremonyStorageConformance, ceremony

from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore


class TestMemoryCeremonies(CeremonyStorageConformance):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()


class TestSqliteCeremonies(CeremonyStorageConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "ceremonies.db")
        yield store
        store.close()


def test_sqlite_schema_refuses_edits_behind_the_store(tmp_path: Path) -> None:
    """Defence in depth: a terminal ceremony, its terms and its approvals cannot be changed
    or deleted even with a plain SQL session on the file."""
    from storage_conformance import approval

    from stellakeys.ceremony.model import CeremonyState

    path = tmp_path / "c.db"
    store = SqliteStore(path)
    c = ceremony()
    with store.transaction() as tx:
        tx.insert_ceremony(c)
        tx.insert_approval(approval(c.ceremony_id, "a@x"))
        tx.update_ceremony(c.cancelled("no", c.created_at))
    store.close()
    assert c.cancelled("no", c.created_at).state is CeremonyState.CANCELLED
    conn = sqlite3.connect(path)
    try:
        for sql in (
            "UPDATE ceremonies SET state = 'Pending'",
            "UPDATE ceremonies SET payload = '{}'",
            "DELETE FROM ceremonies",
            "UPDATE ceremony_approvals SET reason = 'x'",
            "DELETE FROM ceremony_approvals",
        ):
            with pytest.raises(sqlite3.DatabaseError):
                conn.execute(sql)
    finally:
        conn.close()

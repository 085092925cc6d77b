"""The shared SQL core (decision 0019): one migrations module, one dialect description, one
set of shared repository parts, and the structural rules that keep the two SQL adapters from
drifting apart again (no repeated blocks, no oversized modules)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from storage_conformance import audit_record

from stellakeys.audit import AuditQuery
from stellakeys.errors import ConflictError, NotFoundError, StorageError
from stellakeys.storage import _ceremony_codec as cc
from stellakeys.storage._migrations import check_not_newer, packaged_migrations
from stellakeys.storage._sql import glob_to_like
from stellakeys.storage._sqlite_repos import SQLITE
from stellakeys.storage.sqlite import SqliteStore

STORAGE = Path(__file__).resolve().parents[1] / "stellakeys" / "storage"
SQLITE_SIDE = ("sqlite.py", "_sqlite_repos.py")
POSTGRES_SIDE = ("postgres.py", "_postgres_repos.py", "_postgres_sql.py")
BLOCK = 6
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _shapes(path: Path) -> list[list[str]]:
    """The module as runs of normalised lines, one run per function or class body: string
    literals and numbers are blanked (so "?" vs "%s" SQL of the same shape still matches),
    comments, blank lines, imports and ``__all__`` entries are dropped (declarations, not
    logic)."""
    runs: list[list[str]] = [[]]
    in_all = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("__all__"):
            in_all = True
        if in_all:
            in_all = not line.startswith("]")
            continue
        if not line or line.startswith(("#", "import ", "from ")) or raw.startswith(" " * 4 + ")"):
            continue
        if re.match(r"(async\s+)?def |class ", line):
            runs.append([])  # a block never spans two definitions
        line = re.sub(r'[rbf]*"(?:[^"\\]|\\.)*"', '"S"', line)
        line = re.sub(r"\b\d+\b", "0", line)
        runs[-1].append(line)
    return runs


def _blocks(paths: list[Path]) -> dict[tuple[str, ...], str]:
    found: dict[tuple[str, ...], str] = {}
    for path in paths:
        for run in _shapes(path):
            for i in range(len(run) - BLOCK + 1):
                found.setdefault(tuple(run[i : i + BLOCK]), f"{path.name}: {run[i]}")
    return found


def _repeated(a: list[Path], b: list[Path]) -> list[str]:
    blocks_a, blocks_b = _blocks(a), _blocks(b)
    return sorted(f"{where} <-> {blocks_b[k]}" for k, where in blocks_a.items() if k in blocks_b)


def test_no_block_of_six_lines_is_repeated_between_the_sql_adapters() -> None:
    repeated = _repeated([STORAGE / n for n in SQLITE_SIDE], [STORAGE / n for n in POSTGRES_SIDE])
    assert repeated == [], "move the shared code into storage/_sql.py or a codec"


def test_the_shape_check_finds_a_copied_block(tmp_path: Path) -> None:
    # The rule must be able to fail: a method copied with other SQL text and placeholders
    # (what the adapters used to hold) is a repeat.
    body = (STORAGE / "_sql.py").read_text(encoding="utf-8")
    start = body.index("    def ceremony_policy_versions")
    method = body[start : body.index("\n\n", start)]
    (tmp_path / "a.py").write_text(method, encoding="utf-8")
    (tmp_path / "b.py").write_text(
        method.replace("ceremony_policy", "other_table").replace("{d.param}", "%s"),
        encoding="utf-8",
    )
    assert _repeated([tmp_path / "a.py"], [tmp_path / "b.py"]) != []


def test_no_storage_module_is_over_600_lines() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in STORAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def test_both_dialects_ship_the_same_migrations() -> None:
    """One numbering for both: a schema change lands on SQLite and PostgreSQL together."""
    sqlite = [(m.version, m.name) for m in packaged_migrations("sqlite")]
    postgres = [(m.version, m.name) for m in packaged_migrations("postgres")]
    assert sqlite == postgres
    assert [v for v, _ in sqlite] == list(range(1, len(sqlite) + 1))


def test_a_newer_schema_is_refused_with_the_database_named() -> None:
    check_not_newer(3, 3)
    with pytest.raises(StorageError, match="PostgreSQL schema is version 4, newer"):
        check_not_newer(4, 3, "PostgreSQL")


@pytest.mark.parametrize(
    ("pattern", "like"),
    [
        ("key.*", "key.%"),
        ("a?b", "a_b"),
        ("100%_done*", "100\\%\\_done%"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_shell_patterns_become_escaped_like_patterns(pattern: str, like: str) -> None:
    # A hostile event-type filter must not widen into LIKE wildcards.
    assert glob_to_like(pattern) == like


def test_upsert_updates_every_column_but_the_key() -> None:
    sql = SQLITE.upsert("key_intents", "key_id, params, created_at", "key_id", ("params",))
    assert sql == (
        "INSERT INTO key_intents (key_id, params, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key_id) DO UPDATE SET params = excluded.params,"
        " created_at = excluded.created_at"
    )


def test_audit_query_with_a_character_class_is_narrowed_then_matched(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "a.db") as store:
        with store.transaction() as tx:
            for kind in ("key.created", "key.revoked", "kez.created", "anchor.created"):
                tx.append_audit(audit_record(kind))
        with store.read() as tx:
            found = tx.audit_events(AuditQuery(event_type="ke[!z].*"))
            limited = tx.audit_events(AuditQuery(event_type="*.created", limit=1))
            since = tx.audit_events(AuditQuery(since=datetime(2999, 1, 1, tzinfo=UTC)))
    assert [e.event_type for e in found] == ["key.created", "key.revoked"]
    assert [e.event_type for e in limited] == ["key.created"]
    assert since == []


def test_the_ceremony_codec_refuses_missing_and_terminal_ceremonies() -> None:
    with pytest.raises(NotFoundError):
        cc.check_mutable("c1", None)
    with pytest.raises(ConflictError, match="terminal"):
        cc.check_mutable("c1", ("Executed",))
    cc.check_mutable("c1", ("Pending",))


def test_native_rows_refuse_naive_datetimes() -> None:
    from stellakeys.intents import KeyIntent
    from stellakeys.storage import _intent_codec as ic

    naive = KeyIntent(
        key_id="k",
        operation="generate",
        profile="p",
        algorithm="ed25519",
        key_store="software",
        created_at=datetime(2024, 1, 1),
    )
    with pytest.raises(ValueError, match="naive"):
        ic.intent_to_row(naive, native=True)
    row = ic.intent_to_row(attrs.evolve(naive, created_at=T0), native=True)
    assert ic.intent_from_row(row, native=True).created_at == T0

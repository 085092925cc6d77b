"""PostgreSQL: schema and migrations, store selection, `stellaops db`, import isolation and the
adapter details the conformance suite cannot see (plans, jsonb, collation, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from pg_server import truncate
from storage_conformance import addr, anchor, at, audit_record, entry, key, proof

from stellakeys.audit import verify_chain
from stellakeys.config import load_settings
from stellakeys.errors import ConflictError, StorageError
from stellakeys.storage import open_store
from stellakeys.storage.postgres import (
    PostgresStore,
    load_postgres_migrations,
    migrate,
    migrate_url,
    redact_url,
)
from stellakeys.storage.sqlite import Migration
from stellakeys_cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
LATEST = load_postgres_migrations()[-1].version


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def store(clean_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore.connect(clean_url)
    yield s
    s.close()


# --- schema and migrations ------------------------------------------------------------------


def test_migrate_from_empty_creates_the_runbook_schema(fresh_url: str) -> None:
    result = migrate_url(fresh_url)
    assert (result.previous, result.current) == (0, LATEST)
    assert result.applied[0] == "0001_initial"
    tables = {
        r[0] for r in sql(fresh_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'signer'")
    }
    assert {
        "trust_anchors",
        "key_history",
        "key_audit_log",
        "keys",
        "proofs",
        "proof_timestamps",
        "store_state",
        "schema_migrations",
        "ceremonies",
        "ceremony_approvals",
    } <= tables
    indexes = dict(
        sql(fresh_url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'signer'")
    )
    # The runbook's three indexes, exactly.
    assert indexes["idx_key_history_validity"].endswith(
        "ON signer.key_history USING btree (anchor_id, added_at, revoked_at)"
    )
    assert indexes["idx_audit_log_time"].endswith(
        'ON signer.key_audit_log USING btree ("timestamp" DESC)'
    )
    assert indexes["idx_audit_log_key"].endswith("ON signer.key_audit_log USING btree (key_id)")
    assert indexes["idx_trust_anchors_index_key"].endswith("(index_key) WHERE active")
    assert "idx_audit_log_ceremony" in indexes
    # The runbook's column types.
    types = dict(
        sql(
            fresh_url,
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'signer'",
        )
    )
    assert types["key_history.id"] == "uuid"
    assert types["key_history.anchor_id"] == "uuid"
    assert types["key_history.added_at"] == "timestamp with time zone"
    assert types["key_history.metadata"] == "jsonb"
    assert types["key_audit_log.event_id"] == "uuid"
    assert types["key_audit_log.timestamp"] == "timestamp with time zone"
    assert types["key_audit_log.details"] == "jsonb"
    assert types["key_audit_log.seq"] == "bigint"


def test_migrate_twice_is_a_no_op(fresh_url: str) -> None:
    migrate_url(fresh_url)
    again = migrate_url(fresh_url)
    assert (again.previous, again.current, again.applied) == (LATEST, LATEST, ())
    assert sql(fresh_url, "SELECT count(*) FROM signer.schema_migrations") == [(LATEST,)]


def test_concurrent_migrators(fresh_url: str) -> None:
    """Eight migrators released together on an empty database: one applies, the others wait
    on the advisory lock and find nothing to do; nobody fails."""
    n = 8
    barrier = threading.Barrier(n)
    results: list[tuple[str, ...]] = []
    errors: list[BaseException] = []
    conns = [psycopg.connect(fresh_url, autocommit=True) for _ in range(n)]

    def run(conn: psycopg.Connection[Any]) -> None:
        try:
            barrier.wait()
            results.append(migrate(conn).applied)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in conns:
        c.close()
    assert not errors, errors
    assert sorted(len(r) for r in results) == [0] * (n - 1) + [LATEST]
    assert sql(fresh_url, "SELECT max(version) FROM signer.schema_migrations") == [(LATEST,)]


def test_failing_migration_leaves_nothing(fresh_url: str) -> None:
    migrations = (
        *load_postgres_migrations(),
        Migration(
            LATEST + 1,
            "broken",
            "CREATE TABLE signer.half_done (x int); SELECT no_such_function();",
        ),
    )
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        with pytest.raises(StorageError, match="broken"):
            migrate(conn, migrations)
        # All or nothing: not even 0001 was kept, the schema is as before.
        assert conn.execute("SELECT to_regclass('signer.keys')").fetchone() == (None,)


def test_missing_outdated_and_newer_schemas_are_refused(fresh_url: str) -> None:
    with pytest.raises(StorageError, match="run `stellaops db migrate"):
        PostgresStore.connect(fresh_url)
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        migrate(conn, ())  # the bookkeeping table only: version 0
    with pytest.raises(StorageError, match=rf"version 0; this stellakeys needs {LATEST}"):
        PostgresStore.connect(fresh_url)
    migrate_url(fresh_url)
    PostgresStore.connect(fresh_url).close()
    sql(fresh_url, "INSERT INTO signer.schema_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(StorageError, match="upgrade stellakeys"):
        PostgresStore.connect(fresh_url)
    with pytest.raises(StorageError, match="upgrade stellakeys"):
        migrate_url(fresh_url)


def test_connection_errors_are_one_line_without_password(pg_server: Any) -> None:
    url = pg_server.url("no_such_db").replace("postgres@", "postgres:s3cret@")
    with pytest.raises(StorageError) as info:
        PostgresStore.connect(url)
    message = str(info.value)
    assert "no_such_db" in message and "s3cret" not in message and "\n" not in message
    assert redact_url("postgresql://u:pw@db.example:5433/signer?sslmode=require") == (
        "postgresql://u@db.example:5433/signer"
    )


def test_append_only_tables_refuse_deletes(store: PostgresStore, clean_url: str) -> None:
    with store.transaction() as tx:
        tx.insert_key(key("k1"))
        tx.append_audit(audit_record(key_id="k1"))
    for statement in (
        "DELETE FROM signer.key_audit_log",
        "UPDATE signer.key_audit_log SET actor = 'mallory'",
        "TRUNCATE signer.key_audit_log",
        "DELETE FROM signer.keys",
        "DELETE FROM signer.store_state",
    ):
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            sql(clean_url, statement)


# --- selection and import isolation ---------------------------------------------------------


def test_open_store_selects_postgres(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncate(migrated_url)
    monkeypatch.delenv("STELLAKEYS_DATABASE_URL", raising=False)
    monkeypatch.delenv("STELLAKEYS_CONFIG", raising=False)
    home = tmp_path / "home"
    # 1. explicit (the CLI's --database-url)
    store = open_store(load_settings(home, database_url=migrated_url))
    assert isinstance(store, PostgresStore)
    with store.transaction() as tx:
        tx.insert_key(key("via-flag"))
    store.close()
    # 2. environment
    monkeypatch.setenv("STELLAKEYS_DATABASE_URL", migrated_url)
    store = open_store(load_settings(home))
    assert isinstance(store, PostgresStore)
    with store.read() as tx:
        assert tx.get_key("via-flag") is not None
    store.close()
    monkeypatch.delenv("STELLAKEYS_DATABASE_URL")
    # 3. database.url in the config file
    config = tmp_path / "signer.yaml"
    config.write_text(f"database:\n  url: {json.dumps(migrated_url)}\n")
    store = open_store(load_settings(home, config_path=config))
    assert isinstance(store, PostgresStore)
    store.close()
    assert not (home / "stellakeys.db").exists()  # SQLite was never opened


def test_importing_stellakeys_does_not_import_psycopg() -> None:
    code = (
        "import sys, stellakeys, stellakeys.manager, stellakeys.storage, stellakeys_cli.main\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr


# --- stellaops db ---------------------------------------------------------------------------


def test_cli_db_migrate_and_status(fresh_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"STELLAKEYS_HOME": str(tmp_path / "home"), "STELLAKEYS_DATABASE_URL": None}
    status = runner.invoke(cli, ["db", "status", "--database-url", fresh_url], env=env)
    assert status.exit_code == 1 and "no stellakeys schema" in status.output
    # Refused by every other command until migrated.
    listed = runner.invoke(cli, ["--database-url", fresh_url, "key", "list"], env=env)
    assert listed.exit_code != 0
    first = runner.invoke(cli, ["db", "migrate", "--database-url", fresh_url], env=env)
    assert first.exit_code == 0, first.output
    assert f"schema version 0 -> {LATEST}" in first.output and "0001_initial" in first.output
    # The global option and the environment variable select the same database.
    again = runner.invoke(cli, ["--database-url", fresh_url, "db", "migrate", "--json"], env=env)
    assert json.loads(again.output)["applied"] == []
    env["STELLAKEYS_DATABASE_URL"] = fresh_url
    status = runner.invoke(cli, ["db", "status", "--json"], env=env)
    assert status.exit_code == 0
    assert json.loads(status.output) == {
        "backend": "postgres",
        "database": redact_url(fresh_url),
        "version": LATEST,
        "latest": LATEST,
        "upToDate": True,
    }


def test_cli_db_migrate_as_a_subprocess(fresh_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "STELLAKEYS_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "stellakeys_cli", "db", "migrate", "--database-url", fresh_url]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("0001_initial" in o for o in outputs) == 1  # two at once: exactly one applied


def test_cli_db_migrate_sqlite(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    env = {"STELLAKEYS_HOME": str(home), "STELLAKEYS_DATABASE_URL": None}
    result = runner.invoke(cli, ["db", "migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert "applied 0001_initial" in result.output
    assert (home / "stellakeys.db").exists()
    assert "up to date" in runner.invoke(cli, ["db", "migrate"], env=env).output
    assert runner.invoke(cli, ["db", "status"], env=env).exit_code == 0


# --- adapter details ------------------------------------------------------------------------


def test_query_plans_use_the_indexes(store: PostgresStore, clean_url: str) -> None:
    from stellakeys.storage import postgres

    long_lived = uuid.uuid4()
    with store.transaction() as tx:
        for i in range(50):
            tx.insert_anchor(anchor(f"pkg:npm/p{i}/*", keys=("k1", "k2")), f"npm/p{i}")
        history = tuple(entry(long_lived, f"k{d}", at(d)) for d in range(400))
        tx.insert_anchor(anchor("pkg:pypi/*", anchor_id=long_lived, key_history=history), "pypi")

    def plan(conn: psycopg.Connection[Any], query: str, params: Any) -> str:
        return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, params).fetchall())

    with psycopg.connect(clean_url, autocommit=True) as conn:
        conn.execute("ANALYZE signer.trust_anchors; ANALYZE signer.key_history")
        conn.execute("SET enable_seqscan = off")  # small tables: make the planner show its index
        lookup = plan(conn, postgres._ANCHORS_BY_INDEX, (["npm/p1", "npm/p2"],))
        assert "idx_trust_anchors_index_key" in lookup
        below = plan(conn, postgres._ANCHORS_BELOW_INDEX, ("npm/p1/", "npm/p10"))
        assert "idx_trust_anchors_index_key" in below, below
        # The runbook's temporal lookup: a range scan of idx_key_history_validity.
        temporal = plan(
            conn,
            "SELECT * FROM signer.key_history WHERE anchor_id = %(a)s AND added_at <= %(t)s"
            " AND (revoked_at IS NULL OR revoked_at > %(t)s)",
            {"a": long_lived, "t": at(3)},
        )
        assert "idx_key_history_validity" in temporal, temporal


def test_keys_valid_at_agrees_with_the_domain(store: PostgresStore) -> None:
    aid = uuid.uuid4()
    history = (
        entry(aid, "old", at(0), revoked_at=at(10), revoke_reason="annual-rotation"),
        entry(aid, "current", at(5)),
        entry(aid, "expiring", at(2), expires_at=at(8)),
        entry(aid, "future", at(20)),
        entry(aid, "scheduled", at(1), revoked_at=at(30), revoke_reason="annual-rotation"),
    )
    a = anchor(anchor_id=aid, key_history=history)
    with store.transaction() as tx:
        tx.insert_anchor(a, "npm")
    with store.read() as tx:
        stored = tx.get_anchor(aid)
        assert stored is not None
        for day in (-1, 0, 1.5, 2, 5, 7.99, 8, 9, 10, 19, 20, 29, 30, 40):
            t = at(day)
            got = tx.keys_valid_at(aid, t)  # type: ignore[attr-defined]
            assert tuple(got) == stored.keys_valid_at(t), day
        assert tx.keys_valid_at(aid, at(10) - timedelta(microseconds=1))  # type: ignore[attr-defined]


def test_conflict_inside_a_transaction_leaves_it_usable(store: PostgresStore) -> None:
    """As in SQLite, a ConflictError does not poison the transaction (PostgreSQL would abort
    it on a unique violation; the adapter uses ON CONFLICT instead)."""
    a = anchor(keys=("k1",))
    with store.transaction() as tx:
        tx.insert_key(key("k1"))
        tx.insert_anchor(a, "npm")
    with store.transaction() as tx:
        with pytest.raises(ConflictError):
            tx.insert_key(key("k1"))
        with pytest.raises(ConflictError):
            tx.insert_history(entry(a.anchor_id, "k1"))
        with pytest.raises(ConflictError):
            tx.insert_anchor(a, "npm")
        tx.insert_key(key("k2"))
        tx.append_audit(audit_record(key_id="k2"))
    with store.read() as tx:
        assert tx.get_key("k2") is not None
        assert verify_chain(tx.iter_audit()).count == 1


def test_a_swallowed_database_error_does_not_commit(store: PostgresStore) -> None:
    """PostgreSQL turns COMMIT of a failed transaction into ROLLBACK; the adapter says so
    instead of returning as if the writes were kept."""
    with pytest.raises(StorageError, match="failed earlier"), store.transaction() as tx:
        tx.insert_key(key("k1"))
        with pytest.raises(StorageError, match="division by zero"):
            tx._exec("SELECT 1/0")  # type: ignore[attr-defined]
    with store.read() as tx:
        assert tx.list_keys() == []


def test_audit_details_that_jsonb_would_change_are_refused(store: PostgresStore) -> None:
    with pytest.raises(StorageError, match="jsonb"), store.transaction() as tx:
        tx.append_audit(audit_record(details={"big": 1e16}))
    with store.transaction() as tx:
        tx.append_audit(audit_record(details={"half": 0.5, "small": 1e-7, "n": 2**60}))
    with store.read() as tx:
        assert verify_chain(tx.iter_audit()).ok


def test_large_timestamp_tokens(store: PostgresStore) -> None:
    digest = addr("e")
    big = os.urandom(8000)  # beyond a btree entry; uniqueness is on its SHA-256
    with store.transaction() as tx:
        tx.put_proof(proof("e"))
        tx.add_proof_timestamp(digest, big)
        tx.add_proof_timestamp(digest, big)
    with store.read() as tx:
        got = tx.get_proof(digest)
        assert got is not None and got.timestamp_tokens == (big,)


def test_identifiers_sort_bytewise(store: PostgresStore) -> None:
    ids = ["b", "B", "a", "_x", "Ä", "é", "Z", "10", "9"]
    with store.transaction() as tx:
        for i in ids:
            tx.insert_key(key(i))
    with store.read() as tx:
        assert [k.key_id for k in tx.list_keys()] == sorted(ids)


def test_change_token_sees_other_stores_and_manual_sql(
    store: PostgresStore, clean_url: str
) -> None:
    other = PostgresStore.connect(clean_url)
    try:
        t0 = store.change_token()
        with other.transaction() as tx:
            tx.insert_key(key("k1"))
        t1 = store.change_token()
        assert t1 != t0
        with other.transaction():
            pass  # a write transaction that wrote nothing
        assert store.change_token() == t1
        sql(
            clean_url,
            "INSERT INTO signer.proofs (digest, envelope_json, created_at)"
            " VALUES ('sha256:manual', '\\x00', now())",
        )
        assert store.change_token() != t1
    finally:
        other.close()


def test_store_works_in_a_forked_child(store: PostgresStore) -> None:
    with store.transaction() as tx:
        tx.insert_key(key("parent"))
    store.change_token()
    pid = os.fork()
    if pid == 0:  # the child: its own connections; the parent's are left alone
        code = 1
        try:
            with store.transaction() as tx:
                tx.insert_key(key("child"))
            store.change_token()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with store.read() as tx:  # the parent's pooled connection still works
        assert {k.key_id for k in tx.list_keys()} == {"parent", "child"}
    store.change_token()


def test_hot_statements_keep_their_generic_plan(clean_url: str) -> None:
    """The anchor lookup is prepared once and never re-planned (plan_cache_mode)."""
    with PostgresStore.connect(clean_url, max_size=1) as s:
        with s.transaction() as tx:
            tx.insert_anchor(anchor(keys=("k1",)), "npm")
        for _ in range(10):
            with s.read() as tx:
                assert len(tx.anchors_by_index_keys(["npm", "npm/x"])) == 1
        with s.read() as tx:
            plans = tx._conn.execute(  # type: ignore[attr-defined]
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%%index_key = ANY%%'"
            ).fetchall()
    assert len(plans) == 1 and plans[0][0] >= 5 and plans[0][1] == 0, plans

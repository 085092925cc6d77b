"""The change token on PostgreSQL (decision 0024): strict by default, bounded staleness with
LISTEN/NOTIFY on request, and both through PgBouncer.

What a verifier must never do is accept a revoked key for longer than its mode allows: strict,
not at all once the revocation has committed; with ``max_staleness``, not in a verification
that starts more than ``max_staleness`` seconds after the commit, whatever happens to the
listener. Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process on the
machine); verification times are fixed datetimes, never today's date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_server import PgBouncer

from stellakeys import Statement, Subject
from stellakeys.clock import FrozenClock
from stellakeys.crypto import PrivateKey, get_algorithm
from stellakeys.dsse import sign_envelope
from stellakeys.errors import StorageError
from stellakeys.manager import KeyManager
from stellakeys.storage._postgres_token import CHANNEL
from stellakeys.storage.postgres import PostgresStore

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 3, 1, tzinfo=UTC)
AT = T0 + timedelta(days=1)  # the proof's asserted signing time
BOUND = 0.5
PURL = "pkg:npm/acme/app@1.0.0"
DEAD_URL = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"


def envelope(signer: PrivateKey) -> bytes:
    statement = Statement((Subject(PURL, {"sha256": "ab" * 32}),), "evidence.stella/v1", {})
    env = sign_envelope("application/vnd.in-toto+json", statement.to_json(), [signer], ["k"])
    return env.to_json()


@pytest.fixture
def setup(clean_url: str) -> Iterator[tuple[str, str, bytes]]:
    """(url, anchor id, a proof signed by key "k" of that anchor), written by a writer store."""
    signer = get_algorithm("ed25519").generate()
    writer = KeyManager(PostgresStore.connect(clean_url), clock=FrozenClock(T0), actor="t")
    writer.import_key("k", signer.public_key().to_pem())
    anchor = writer.create_anchor("pkg:npm/acme/*", ["k"], ["evidence.stella/v1"])
    writer.close()
    yield clean_url, str(anchor.anchor_id), envelope(signer)


def revoke(url: str, anchor_id: str) -> None:
    """Another party revokes "k" as compromised (from before the proof), and commits."""
    writer = KeyManager(PostgresStore.connect(url), clock=FrozenClock(T0 + timedelta(days=2)))
    try:
        writer.revoke_key(anchor_id, "k", "compromise", T0)
    finally:
        writer.close()


def test_strict_default_sees_a_revocation_committed_just_before(
    setup: tuple[str, str, bytes],
) -> None:
    url, anchor_id, blob = setup
    verifier = KeyManager(PostgresStore.connect(url), clock=FrozenClock(T0))
    try:
        for _ in range(10):  # warm: the anchor is cached
            assert verifier.verify(blob, at=AT).ok
        revoke(url, anchor_id)
        # No pause: the commit has returned, so the very next verification must refuse.
        assert not verifier.verify(blob, at=AT).ok
    finally:
        verifier.close()


def test_strict_through_pgbouncer_sees_a_revocation_committed_just_before(
    setup: tuple[str, str, bytes], pgbouncer: PgBouncer
) -> None:
    url, anchor_id, blob = setup
    store = PostgresStore.connect(pgbouncer.url_for(url), pooler="transaction")
    verifier = KeyManager(store, clock=FrozenClock(T0))
    try:
        for _ in range(10):
            assert verifier.verify(blob, at=AT).ok
        revoke(url, anchor_id)
        assert not verifier.verify(blob, at=AT).ok
    finally:
        verifier.close()


def test_the_counter_notifies_on_commit_only_with_its_new_value(clean_url: str) -> None:
    with psycopg.connect(clean_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        store = PostgresStore.connect(clean_url)
        try:
            with pytest.raises(RuntimeError), store.transaction() as tx:
                tx.insert_key(key_record("rolled-back"))
                raise RuntimeError("abort")
            assert list(listener.notifies(timeout=0.2)) == []  # a rollback says nothing
            with store.transaction() as tx:
                tx.insert_key(key_record("a"))
                tx.insert_key(key_record("b"))  # one transaction: one bump, one notification
            got = [n.payload for n in listener.notifies(timeout=1.0)]
            assert got == [str(store.change_token())]
        finally:
            store.close()


def key_record(key_id: str) -> Any:
    from storage_conformance import key

    return key(key_id)


def test_bounded_staleness_never_exceeds_the_bound_when_the_listener_is_unreachable(
    setup: tuple[str, str, bytes],
) -> None:
    """The listener cannot connect (listen_url points nowhere): the store must fall back to
    reading the counter, and a revocation is refused once the bound has passed."""
    url, anchor_id, blob = setup
    store = PostgresStore.connect(url, max_staleness=BOUND, listen_url=DEAD_URL)
    verifier = KeyManager(store, clock=FrozenClock(T0))
    try:
        assert verifier.verify(blob, at=AT).ok
        revoke(url, anchor_id)
        committed = time.monotonic()
        while time.monotonic() <= committed + BOUND:
            time.sleep(0.05)
        assert not verifier.verify(blob, at=AT).ok
    finally:
        verifier.close()


def test_max_staleness_must_be_a_positive_number() -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(StorageError, match="max_staleness"):
            PostgresStore(DEAD_URL, max_staleness=bad)
    with pytest.raises(StorageError, match="pooler"):
        PostgresStore(DEAD_URL, pooler="session")


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime
    from stellakeys.clock import FrozenClock
    from stellakeys.manager import KeyManager
    from stellakeys.storage.postgres import PostgresStore

    url, blob_path, at, bound, listen = sys.argv[1:6]
    blob = open(blob_path, "rb").read()
    at = datetime.fromisoformat(at)
    store = PostgresStore.connect(url, max_staleness=float(bound), listen_url=listen or None)
    km = KeyManager(store, clock=FrozenClock(at))
    assert km.verify(blob, at=at).ok
    deadline = time.monotonic() + 20
    while not store._listener.alive:  # the listener is up: the test measures it, not start-up
        assert time.monotonic() < deadline, "listener never came up"
        time.sleep(0.01)
    print("ready", flush=True)
    last_ok = None
    verifies = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        ok = km.verify(blob, at=at).ok
        verifies += 1
        if not ok:
            print(json.dumps({"last_ok": last_ok, "refused": started, "n": verifies}), flush=True)
            break
        last_ok = started
        time.sleep(0.002)
    km.close()
    """
)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "pgbouncer+listen_url"])
def test_another_process_refuses_a_revoked_key_within_the_bound(
    setup: tuple[str, str, bytes], tmp_path: Path, request: pytest.FixtureRequest, direct: bool
) -> None:
    """Process A verifies warm with max_staleness=0.5; this process (B) revokes the key. No
    verification of A that starts more than 0.5 s after B's commit may accept the key; with
    the listener up, A refuses well within the bound (the NOTIFY, not the heartbeat)."""
    url, anchor_id, blob = setup
    blob_path = tmp_path / "proof.json"
    blob_path.write_bytes(blob)
    a_url, listen = url, ""
    if not direct:  # A's queries through PgBouncer, its LISTEN directly
        a_url, listen = request.getfixturevalue("pgbouncer").url_for(url), url
    args = [sys.executable, "-c", _CHILD, a_url, str(blob_path), AT.isoformat(), str(BOUND)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    child = subprocess.Popen(
        [*args, listen], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr and child.stderr.read()
        time.sleep(0.2)  # A is verifying warm, from its cache
        revoke(url, anchor_id)
        committed = time.monotonic()
        line = child.stdout.readline()
        assert line, child.stderr and child.stderr.read()
        seen = json.loads(line)
    finally:
        child.kill()
        child.wait()
    assert seen["last_ok"] is not None
    # The promise: an acceptance started no later than the bound after the commit.
    assert seen["last_ok"] <= committed + BOUND
    assert seen["refused"] <= committed + BOUND + 0.25  # A had no pause in its loop
    assert seen["n"] > 10


def test_settings_carry_max_staleness_listen_url_and_pooler_to_the_store(
    clean_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stellakeys.config import load_settings
    from stellakeys.errors import ConfigError
    from stellakeys.storage import open_store

    monkeypatch.delenv("STELLAKEYS_MAX_STALENESS", raising=False)
    config = tmp_path / "signer.yaml"
    config.write_text(
        f"database:\n  url: '{clean_url}'\n  maxStaleness: 0.25\n"
        f"  listenUrl: '{clean_url}'\n  pooler: transaction\n",
        encoding="utf-8",
    )
    store = open_store(load_settings(tmp_path, config))
    try:
        assert isinstance(store, PostgresStore)
        assert (store.max_staleness, store.pooler) == (0.25, "transaction")
    finally:
        store.close()
    # The CLI's --max-staleness (passed as the argument) wins over the environment, which
    # wins over the file.
    monkeypatch.setenv("STELLAKEYS_MAX_STALENESS", "2")
    assert load_settings(tmp_path, config).max_staleness == 2.0
    assert load_settings(tmp_path, config, max_staleness=3.0).max_staleness == 3.0
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("STELLAKEYS_MAX_STALENESS", bad)
        with pytest.raises(ConfigError, match="STELLAKEYS_MAX_STALENESS"):
            load_settings(tmp_path, config)


def test_cli_refuses_a_max_staleness_that_is_not_positive(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stellakeys_cli.main import cli

    result = CliRunner().invoke(
        cli, ["--home", str(tmp_path), "--max-staleness", "0", "key", "list"]
    )
    assert result.exit_code == 2
    assert "--max-staleness" in result.output


def _child_sees_writes(store: PostgresStore, url: str, out: Any) -> None:
    """In a forked child: the inherited store starts a listener of its own and follows a
    write committed by another store."""
    try:
        before = store.change_token()
        listener = store._listener
        assert listener is not None and listener.alive is not None
        other = PostgresStore.connect(url)
        with other.transaction() as tx:
            tx.insert_key(key_record("from-child"))
        other.close()
        committed = time.monotonic()
        while store.change_token() == before:
            assert time.monotonic() < committed + BOUND + 0.25, "stale beyond the bound"
            time.sleep(0.01)
        out.put("ok")
    except BaseException as exc:  # reported to the parent, which asserts
        out.put(repr(exc))


def test_bounded_staleness_survives_fork(clean_url: str) -> None:
    import multiprocessing

    store = PostgresStore.connect(clean_url, max_staleness=BOUND)
    try:
        first = store.change_token()  # the parent's listener is running
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_child_sees_writes, args=(store, clean_url, out))
        child.start()
        assert out.get(timeout=30) == "ok"
        child.join(timeout=30)
        # The parent's connections and listener were left alone by the child.
        deadline = time.monotonic() + BOUND + 0.25
        while store.change_token() == first:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with store.read() as tx:
            assert tx.get_key("from-child") is not None
    finally:
        store.close()


def test_cli_max_staleness_after_the_command_reaches_a_postgres_store(
    clean_url: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from stellakeys_cli.main import cli

    args = ["--home", str(tmp_path), "key", "list", "--database-url", clean_url]
    result = CliRunner().invoke(cli, [*args, "--max-staleness", "0.5"])
    assert result.exit_code == 0, result.output

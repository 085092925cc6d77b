"""Eight `stellaops feed publish` processes at once, on SQLite and on PostgreSQL: exactly one
gets version N+1, the others a clear conflict (exit 1, one line, nothing stored), and the next
publication is N+2 on top of the winner (decision 0017, docs/feed.md).

The processes are real CLI invocations sharing one store; they import everything first and
are released together through a "go" file, so they really race (interpreter start-up takes
longer than the publication itself).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stellakeys.feed import (
    PAYLOAD_TYPE,
    FeedConfig,
    FeedConsumer,
    FeedError,
    build_document,
    latest_published,
    parse_feed,
    publish_feed,
)
from stellakeys.manager import KeyManager

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PUBLISHERS = 8
PASSPHRASE = "feed-concurrency-passphrase"

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from stellakeys_cli.main import main
    import stellakeys.feed, stellakeys.manager, stellakeys.keystores.software  # noqa: F401

    go, args = sys.argv[1], sys.argv[2:]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    main(args)
    """
)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (tests/postgres/pg_server.py), for this module only."""
    sys.path.insert(0, str(ROOT / "tests" / "postgres"))
    from pg_server import MISSING, PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        pytest.fail(MISSING)
    server = PostgresServer()
    try:
        from stellakeys.storage.postgres import PostgresStore

        url = server.create_database("feed_race")
        PostgresStore.connect(url, migrate=True).close()
        yield url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def home(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with two feed keys (threshold 2), one anchor and feed version 1 published."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    config: dict[str, object] = {"feed": {"keyIds": ["f1", "f2"], "threshold": 2}}
    if request.param == "postgres":
        config["database"] = {"url": request.getfixturevalue("postgres_url")}
    (home / "signer.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("STELLAKEYS_CONFIG", raising=False)
    monkeypatch.delenv("STELLAKEYS_DATABASE_URL", raising=False)
    with KeyManager.open(home) as km:
        for key_id in ("f1", "f2", "k1"):
            km.generate_key(key_id)
        km.create_anchor("pkg:npm/*", ["k1"], ["evidence.stella/v1"], "v1")
    assert cli(home, "feed", "publish", "--output", str(tmp_path / "v1.json")).returncode == 0
    return home


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "--home", str(home), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def race(home: Path, outputs: list[Path], go: Path) -> list[subprocess.CompletedProcess[str]]:
    publish = ["--home", str(home), "feed", "publish", "--include-keys"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(go), *publish, "--output", str(out)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outputs
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr
    go.touch()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def stored_feeds(km: KeyManager) -> list[int]:
    """The versions of every feed envelope in the proof store, winners and losers alike."""
    versions = []
    with km.store.read() as tx:
        for record in tx.iter_proofs():
            if b'"payloadType":"' + PAYLOAD_TYPE.encode() + b'"' in record.envelope_json:
                versions.append(parse_feed(record.envelope_json).document.version)
    return sorted(versions)


def test_concurrent_publishers_one_gets_the_version_the_others_a_conflict(
    home: Path, tmp_path: Path
) -> None:
    outputs = [tmp_path / f"feed-{i}.json" for i in range(PUBLISHERS)]
    results = race(home, outputs, tmp_path / "go")

    winners = [i for i, r in enumerate(results) if r.returncode == 0]
    assert len(winners) == 1, [(r.returncode, r.stderr) for r in results]
    for i, r in enumerate(results):
        if i in winners:
            continue
        # A typed conflict: one line, exit 1, naming the version and what to do; no file.
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith("error: feed version 2 was published by another publisher")
        assert "nothing was stored" in lines[0] and "run feed publish again" in lines[0]
        assert not outputs[i].exists()

    winner = parse_feed(outputs[winners[0]].read_bytes())
    assert winner.document.version == 2
    with KeyManager.open(home) as km:
        # The losers stored nothing: one envelope per version in the whole proof store.
        assert stored_feeds(km) == [1, 2]
        with km.store.read() as tx:
            recorded = tx.feed_versions()
        assert [(r.version, r.digest) for r in recorded][1] == (2, winner.envelope.digest())
        assert latest_published(km) == winner
        assert km.verify_audit().ok

    # A consumer that trusts version 1 accepts the winner; a loser retrying publishes 3.
    state = tmp_path / "state"
    FeedConsumer(state).pin((tmp_path / "v1.json").read_bytes(), winner.document.issued_at)
    FeedConsumer(state).update([winner.envelope], winner.document.issued_at)
    retry = cli(home, "feed", "publish", "--output", str(tmp_path / "v3.json"))
    assert retry.returncode == 0, retry.stderr
    third = parse_feed((tmp_path / "v3.json").read_bytes())
    assert third.document.version == 3 and third.document.previous == winner.digest


# --- the records themselves, attacked and upgraded (in-process, SQLite) ------------------------


@pytest.fixture
def km(stellakeys_manager: KeyManager) -> KeyManager:
    for key_id in ("f1", "f2", "f3", "k1"):
        stellakeys_manager.generate_key(key_id)
    stellakeys_manager.create_anchor("pkg:npm/*", ["k1"], ["evidence.stella/v1"], "v1")
    return stellakeys_manager


CONFIG = FeedConfig(("f1", "f2"), threshold=2)


def raw_sql(home: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """What a database writer with a sqlite3 shell can do: drop the guard triggers too."""
    with sqlite3.connect(home / "stellakeys.db", isolation_level=None) as conn:
        for sql, params in statements:
            conn.execute(sql, params)
    conn.close()


def test_a_redirected_version_record_stops_publication(
    km: KeyManager, stellakeys_home: Path
) -> None:
    v1 = publish_feed(km, CONFIG).feed
    # A forged version 2 signed into the store by someone holding only f3 (anyone may sign
    # this payload type); after the genuine version 2, its record is pointed at the forgery.
    forged = build_document(
        km, FeedConfig(("f3",), 1), include_keys=True, urgent=False, previous=v1, now=km.clock.now()
    )
    forged_address = km.sign(forged.to_json(), ["f3"], PAYLOAD_TYPE)
    publish_feed(km, CONFIG)  # version 2, genuine
    raw_sql(
        stellakeys_home,
        ("DROP TRIGGER feed_versions_no_update", ()),
        ("PRAGMA foreign_keys = ON", ()),
        ("UPDATE feed_versions SET digest = ? WHERE version = 2", (forged_address,)),
    )
    with pytest.raises(FeedError, match=r"records feed version 2 as .*were changed"):
        publish_feed(km, CONFIG)
    with pytest.raises(FeedError, match="were changed"):
        latest_published(km)


def test_the_no_gap_and_append_only_rules_hold_for_raw_sql(
    km: KeyManager, stellakeys_home: Path
) -> None:
    first = publish_feed(km, CONFIG)
    with pytest.raises(sqlite3.IntegrityError, match="without gaps"):
        raw_sql(
            stellakeys_home,
            ("INSERT INTO feed_versions VALUES (3, ?, 0)", (first.proof,)),
        )
    with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE|PRIMARY"):
        raw_sql(stellakeys_home, ("INSERT INTO feed_versions VALUES (1, 'sha256:x', 0)", ()))
    for sql in ("DELETE FROM feed_versions", "UPDATE feed_versions SET published_at = 0"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw_sql(stellakeys_home, (sql, ()))


def test_feeds_published_before_the_records_are_recorded_by_the_next_publication(
    km: KeyManager, stellakeys_home: Path
) -> None:
    v1, v2 = publish_feed(km, CONFIG), publish_feed(km, CONFIG)
    # A store upgraded from before migration 0003: feeds among the proofs, no records.
    raw_sql(
        stellakeys_home,
        ("DROP TRIGGER feed_versions_no_delete", ()),
        ("DELETE FROM feed_versions", ()),
    )
    assert latest_published(km) == v2.feed  # followed through the proofs
    v3 = publish_feed(km, CONFIG)
    assert v3.document.version == 3 and v3.document.previous == v2.feed.digest
    with km.store.read() as tx:
        assert [(r.version, r.digest) for r in tx.feed_versions()] == [
            (1, v1.proof),
            (2, v2.proof),
            (3, v3.proof),
        ]

"""Eight `stellaops feed publish` processes at once, on SQLite and on PostgreSQL: exactly one
gets version N+1, the others a clear conflict (exit 1, one line, nothing stored), and the next
publication is N+2 on top of the winner (decision 0017, docs/feed.md).

The processes are real CLI invocations sharing one store; they import everything first and
are released together through a "go" file, so they really race (interpreter start-up takes
longer than the publication itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stellakeys.feed import PAYLOAD_TYPE, FeedConsumer, latest_published, parse_feed
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

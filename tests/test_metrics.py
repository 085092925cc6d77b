"""Prometheus metrics: the runbook's names, types and labels, read from the text exposition;
the alert rules checked and unit-tested with promtool; ``stellaops metrics serve``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stellakeys import COMPROMISE, FrozenClock, KeyManager, Statement, Subject
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.metrics import exposition, make_wsgi_app, registry_for, snapshot
from stellakeys.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "docs" / "alerts"
T0 = datetime(2024, 1, 15, tzinfo=UTC)
EVIDENCE = "evidence.stella/v1"


@pytest.fixture
def km(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "metrics-test-passphrase")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    manager = KeyManager(
        MemoryStore(),
        clock=FrozenClock(T0),
        actor="tester",
        keystore_context=KeyStoreContext(home=home),
    )
    yield manager
    manager.close()


def scrape(km: KeyManager) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """name -> (type, [(sample name, labels, value)]) from the text exposition."""
    text = exposition(km).decode()
    return {
        f.name: (f.type, [(s.name, dict(s.labels), s.value) for s in f.samples])
        for f in text_string_to_metric_families(text)
    }


def test_exposition_has_the_runbook_names_types_and_labels(km: KeyManager) -> None:
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    km.generate_key("key-2024-prod", "default")
    km.generate_key("key-2024-java", "fips")
    anchor = km.create_anchor("pkg:npm/*", ["key-2024-prod"], [EVIDENCE])
    clock.advance(timedelta(days=200))
    km.generate_key("key-2025-prod", "default")
    km.add_key(anchor.anchor_id, "key-2025-prod")  # a rotation event (runbook step 2)
    km.revoke_key(anchor.anchor_id, "key-2024-prod", "annual-rotation")
    clock.advance(timedelta(days=10))

    text = exposition(km).decode()
    # Exact exposition lines: counters keep their _total name, no _created series.
    assert "# TYPE signer_key_age_days gauge" in text
    assert "# TYPE signer_keys_active_total gauge" in text
    assert "# TYPE signer_keys_revoked_total counter" in text
    assert "# TYPE signer_rotation_events_total counter" in text
    assert "# TYPE signer_verification_key_lookups_total counter" in text
    assert "_created" not in text

    families = scrape(km)
    kind, ages = families["signer_key_age_days"]
    assert kind == "gauge"
    by_key = {labels["key_id"]: (labels, value) for _, labels, value in ages}
    # key-2024-prod is revoked in its only anchor: no longer active, no age series.
    assert set(by_key) == {"key-2024-java", "key-2025-prod"}
    labels, age = by_key["key-2024-java"]
    assert labels == {
        "key_id": "key-2024-java",
        "profile": "fips",
        "algorithm": "ecdsa-p256-sha256",
    }
    assert age == pytest.approx(210.0)
    assert by_key["key-2025-prod"][1] == pytest.approx(10.0)

    kind, active = families["signer_keys_active_total"]
    assert kind == "gauge"
    per_profile = {labels["profile"]: value for _, labels, value in active}
    # Every configured profile is present, zero included.
    assert per_profile == {"default": 1, "fips": 1, "gost": 0, "sm2": 0, "pqc": 0}

    # prometheus_client names counter families without _total; the samples carry it.
    assert families["signer_keys_revoked"] == ("counter", [("signer_keys_revoked_total", {}, 1)])
    assert families["signer_rotation_events"] == (
        "counter",
        [("signer_rotation_events_total", {}, 1)],
    )
    assert families["signer_verification_key_lookups"] == (
        "counter",
        [("signer_verification_key_lookups_total", {}, 0)],
    )


def test_counters_follow_the_store_and_the_facade(km: KeyManager) -> None:
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    km.generate_key("a", "default")
    km.generate_key("b", "default")
    anchor = km.create_anchor("pkg:npm/*", ["a"], [EVIDENCE])
    other = km.create_anchor("pkg:maven/*", ["a", "b"], [EVIDENCE])
    registry = registry_for(km)

    def value(name: str) -> float:
        got = registry.get_sample_value(name)
        assert got is not None, name
        return got

    # Keys an anchor is created with are not rotations.
    assert value("signer_rotation_events_total") == 0
    km.add_key(anchor.anchor_id, "b")
    assert value("signer_rotation_events_total") == 1

    # A scheduled revocation counts once it is in effect, and the count never goes down.
    km.revoke_key(anchor.anchor_id, "a", "annual-rotation", T0 + timedelta(days=30))
    assert value("signer_keys_revoked_total") == 0
    clock.advance(timedelta(days=30))
    assert value("signer_keys_revoked_total") == 1
    # "a" is still valid in the maven anchor: still active.
    assert registry.get_sample_value("signer_keys_active_total", {"profile": "default"}) == 2
    km.revoke_key("ALL", "a", COMPROMISE)
    assert value("signer_keys_revoked_total") == 2
    assert registry.get_sample_value("signer_keys_active_total", {"profile": "default"}) == 1
    assert (
        registry.get_sample_value(
            "signer_key_age_days", {"key_id": "a", "profile": "default", "algorithm": "ed25519"}
        )
        is None
    )

    # Verifications are counted by the facade hook, whatever their outcome.
    proof = km.sign(
        Statement((Subject("pkg:maven/org.x/y@1", {"sha256": "ab" * 32}),), EVIDENCE, {}).to_json(),
        "b",
    )
    assert km.verify(proof).ok
    assert not km.verify(proof, at=T0 - timedelta(days=1)).ok
    assert value("signer_verification_key_lookups_total") == 2
    # A second registry over the same manager shares the count (one hook per manager).
    assert registry_for(km).get_sample_value("signer_verification_key_lookups_total") == 2
    assert snapshot(km).key_lookups == 2
    assert other.anchor_id != anchor.anchor_id


def test_wsgi_app_serves_the_exposition(km: KeyManager) -> None:
    km.generate_key("k", "pqc")
    app = make_wsgi_app(km)
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]]) -> None:
        status.append(s)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    body = b"".join(app(environ, start_response)).decode()
    assert status == ["200 OK"]
    assert 'signer_key_age_days{algorithm="ml-dsa-65",key_id="k",profile="pqc"} 0.0' in body


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: install Debian package prometheus")
    return tool


def test_alert_rules_pass_promtool_check() -> None:
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS / "key-rotation.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 2 rules found" in proc.stdout + proc.stderr


def test_alert_rules_fire_as_the_runbook_says() -> None:
    proc = subprocess.run(
        [_promtool(), "test", "rules", "key-rotation.rules.test.yml"],
        capture_output=True,
        text=True,
        cwd=ALERTS,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_match_the_runbook_metric() -> None:
    rules = (ALERTS / "key-rotation.rules.yml").read_text()
    assert "expr: signer_key_age_days > (365 - 60)" in rules
    assert "expr: signer_key_age_days > 365" in rules


def test_cli_metrics_serve_and_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {
        **os.environ,
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "cli-metrics",
        "STELLAKEYS_ACTOR": "ops@example.com",
    }
    cli = [sys.executable, "-m", "stellakeys_cli"]
    subprocess.run(
        [*cli, "key", "generate", "--profile", "default", "--key-id", "key-2025-prod"],
        env=env,
        check=True,
        capture_output=True,
    )
    shown = subprocess.run(
        [*cli, "metrics", "show"], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert re.search(r'^signer_keys_active_total\{profile="default"\} 1\.0$', shown, re.M)

    server = subprocess.Popen(
        [*cli, "metrics", "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        match = re.search(r"http://[\d.]+:(\d+)/metrics", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}/metrics"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'signer_key_age_days{algorithm="ed25519",key_id="key-2025-prod"' in body
        # Another process revokes: the running exporter sees it (the store is the source).
        anchor = subprocess.run(
            [
                *cli,
                *("anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "key-2025-prod"),
                *("--predicate-types", EVIDENCE, "--json"),
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        anchor_id = re.search(r'"trustAnchorId": "([^"]+)"', anchor)
        assert anchor_id
        subprocess.run(
            [
                *cli,
                *("anchor", "revoke-key", "--anchor-id", anchor_id.group(1)),
                *("--key-id", "key-2025-prod", "--reason", "annual-rotation"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "signer_keys_revoked_total 1.0" in body
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0

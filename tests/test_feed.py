"""The key-material feed: publishing, the version chain (rollback, skipped version,
equivocation, expiry, feed-key rotation), offline verification from the feed alone, and the
CLI. Uses this project's own pytest plugin fixtures (stellakeys_manager, stellakeys_clock)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from click.testing import CliRunner

from stellakeys import COMPROMISE, FrozenClock, KeyManager, Statement, Subject
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.feed import (
    PAYLOAD_TYPE,
    FeedConfig,
    FeedConsumer,
    FeedError,
    latest_published,
    manager_from_feed,
    parse_feed,
    publish_feed,
    walk_chain,
)
from stellakeys_cli.main import cli

EVIDENCE = "evidence.stella/v1"


def statement(purl: str) -> bytes:
    return Statement((Subject(purl, {"sha256": "ab" * 32}),), EVIDENCE, {}).to_json()


@pytest.fixture
def km(stellakeys_manager: KeyManager, stellakeys_clock: FrozenClock) -> KeyManager:
    for key_id in ("f1", "f2", "f3", "f4"):
        stellakeys_manager.generate_key(key_id)
    stellakeys_manager.generate_key("k1")
    stellakeys_manager.generate_key("k2", "pqc")
    stellakeys_manager.create_anchor("pkg:npm/*", ["k1", "k2"], [EVIDENCE], "v2.3.1")
    stellakeys_clock.advance(timedelta(days=1))
    return stellakeys_manager


A = FeedConfig(("f1", "f2"), threshold=2)
B = FeedConfig(("f2", "f3"), threshold=2)


def sign_document(km: KeyManager, document: Any, *key_ids: str) -> bytes:
    """A feed envelope made outside publish_feed and outside the store (forks, attacks)."""
    handles = [km._handle(km.get_key(k)) for k in key_ids]
    return sign_envelope(PAYLOAD_TYPE, document.to_json(), handles, list(key_ids)).to_json()


def test_publish_writes_a_signed_versioned_document(
    km: KeyManager, stellakeys_clock: FrozenClock
) -> None:
    anchor = km.list_anchors()[0]
    km.revoke_key(anchor.anchor_id, "k2", "annual-rotation", stellakeys_clock.now())
    first = publish_feed(km, A, include_keys=True)
    doc = first.document
    assert (doc.version, doc.previous, doc.urgent, doc.includes_keys) == (1, None, False, True)
    assert doc.expires_at - doc.issued_at == timedelta(days=30)
    envelope = first.feed.envelope
    assert envelope.payload_type == PAYLOAD_TYPE == "application/vnd.stellakeys.feed+json"
    assert {s.keyid for s in envelope.signatures} == {"f1", "f2"}
    body = json.loads(envelope.payload)
    assert body["_type"] == "https://stellakeys.dev/feed/v1"
    (a,) = body["anchors"]
    assert a["purlPattern"] == "pkg:npm/*" and a["policyVersion"] == "v2.3.1"
    keys = {k["keyid"]: k for k in a["keyHistory"]}
    assert keys["k1"]["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert keys["k2"]["revokeReason"] == "annual-rotation" and keys["k2"]["revokedAt"]
    assert body["revocations"] == [
        {
            "anchorId": str(anchor.anchor_id),
            "keyid": "k2",
            "revokedAt": keys["k2"]["revokedAt"],
            "reason": "annual-rotation",
        }
    ]
    assert body["feedKeys"]["threshold"] == 2
    # The feed is stored (as a proof) and the next one follows it.
    assert latest_published(km) == first.feed
    second = publish_feed(km, A, urgent=True)
    assert second.document.version == 2 and second.document.previous == first.feed.digest
    assert second.document.expires_at - second.document.issued_at == timedelta(days=7)
    assert (
        "publicKey" not in json.loads(second.feed.envelope.payload)["anchors"][0]["keyHistory"][0]
    )


def test_consumer_follows_the_chain_and_refuses_rollback_gaps_and_forks(
    km: KeyManager, stellakeys_clock: FrozenClock, tmp_path: Path
) -> None:
    v1 = publish_feed(km, A, include_keys=True).feed
    v2 = publish_feed(km, A, include_keys=True).feed
    v3 = publish_feed(km, A, include_keys=True).feed
    now = stellakeys_clock.now()
    consumer = FeedConsumer(tmp_path / "state")
    with pytest.raises(FeedError, match="no trusted feed"):
        consumer.update([v2.envelope], now)
    consumer.pin(v1.envelope, now)

    with pytest.raises(FeedError, match="skips version 2"):
        consumer.update([v3.envelope], now)
    assert consumer.trusted() == v1  # a refused update changes nothing

    assert consumer.update([v2.envelope], now).document.version == 2
    assert consumer.update([v2.envelope], now).document.version == 2  # idempotent

    with pytest.raises(FeedError, match="rollback refused"):
        consumer.update([v1.envelope], now)

    fork = sign_document(km, attrs.evolve(v2.document, urgent=True), "f1", "f2")
    with pytest.raises(FeedError, match="differs from the version 2 already trusted"):
        consumer.update([fork], now)

    assert consumer.update([v3.envelope], now).document.version == 3
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "feed-1.json",
        "feed-2.json",
        "feed-3.json",
        "trusted.json",
    ]
    # A consumer that is behind may take several versions at once, in any order.
    late = FeedConsumer(tmp_path / "late")
    late.pin(v1.envelope, now)
    assert late.update([v3.envelope, v2.envelope], now).document.version == 3


def test_expired_feeds_are_refused(
    km: KeyManager, stellakeys_clock: FrozenClock, tmp_path: Path
) -> None:
    v1 = publish_feed(km, A, include_keys=True).feed
    v2 = publish_feed(km, A, include_keys=True, urgent=True).feed
    consumer = FeedConsumer(tmp_path)
    consumer.pin(v1.envelope, stellakeys_clock.now())
    later = v2.document.expires_at  # expiry is exclusive: at expiresAt the feed is dead
    with pytest.raises(FeedError, match="expired at"):
        consumer.update([v2.envelope], later)
    with pytest.raises(FeedError, match="expired"):
        FeedConsumer(tmp_path / "new").pin(v1.envelope, v1.document.expires_at + timedelta(1))
    with pytest.raises(FeedError, match="expired"):
        walk_chain(None, [v1], v1.document.expires_at)
    # An expired intermediate version does not matter when a fresh one follows it (TUF).
    v3 = publish_feed(km, A, include_keys=True)  # issued now, 30 days
    stellakeys_clock.advance(timedelta(days=10))  # v2 (7 days) has expired, v3 has not
    assert (
        consumer.update([v2.envelope, v3.feed.envelope], stellakeys_clock.now()).document.version
        == 3
    )


def test_feed_key_rotation_needs_old_and_new_keys(
    km: KeyManager, stellakeys_clock: FrozenClock, tmp_path: Path
) -> None:
    now = stellakeys_clock.now()
    v1 = publish_feed(km, A, include_keys=True).feed
    consumer = FeedConsumer(tmp_path)
    consumer.pin(v1.envelope, now)

    # The real rotation, A -> B: publish_feed signs with f1, f2 (v1's) and f3 (new).
    v2 = publish_feed(km, B, include_keys=True).feed
    # An attacker holding only new keys cannot rotate: v1's keys must consent.
    from stellakeys.feed import build_document

    rogue = build_document(
        km, FeedConfig(("f3", "f4"), 2), include_keys=True, urgent=False, previous=v1, now=now
    )
    forged = sign_document(km, rogue, "f3", "f4")
    with pytest.raises(FeedError, match="signed by 0 of the feed keys of version 1"):
        consumer.update([forged], now)

    # The real rotation was signed by f1, f2 and f3: both thresholds hold.
    assert v2.document.version == 2
    assert {s.keyid for s in v2.envelope.signatures} == {"f1", "f2", "f3"}
    assert [k.key_id for k in v2.document.feed_keys] == ["f2", "f3"]
    assert consumer.update([v2.envelope], now).document.version == 2
    # From now on only B's keys sign, and that is enough.
    v3 = publish_feed(km, B, include_keys=True).feed
    assert {s.keyid for s in v3.envelope.signatures} == {"f2", "f3"}
    assert consumer.update([v3.envelope], now).document.version == 3
    # A v4 signed by one B key only is refused.
    lone = build_document(km, B, include_keys=True, urgent=False, previous=v3, now=now)
    with pytest.raises(FeedError, match="signed by 1 of"):
        consumer.update([sign_document(km, lone, "f2")], now)


def test_tampering_and_malformed_feeds(km: KeyManager, stellakeys_clock: FrozenClock) -> None:
    v1 = publish_feed(km, A, include_keys=True).feed
    body = json.loads(v1.envelope.payload)
    body["anchors"][0]["purlPattern"] = "*"
    tampered = Envelope(PAYLOAD_TYPE, json.dumps(body).encode(), v1.envelope.signatures)
    with pytest.raises(FeedError, match="signed by 0 of its own feed keys"):
        walk_chain(None, [parse_feed(tampered)], stellakeys_clock.now())
    body["revocations"] = [{"anchorId": "x", "keyid": "k1", "revokedAt": None, "reason": None}]
    with pytest.raises(FeedError, match="revocations"):
        parse_feed(Envelope(PAYLOAD_TYPE, json.dumps(body).encode(), ()))
    with pytest.raises(FeedError, match="payloadType"):
        parse_feed(Envelope("application/json", v1.envelope.payload, ()).to_json())
    with pytest.raises(FeedError, match="not a DSSE envelope"):
        parse_feed(b"[]")
    # A public key that does not match its fingerprint.
    body = json.loads(v1.envelope.payload)
    other = km.get_key("f3").public_key_pem
    body["anchors"][0]["keyHistory"][0]["publicKey"] = other
    with pytest.raises(FeedError, match="does not match its key"):
        parse_feed(Envelope(PAYLOAD_TYPE, json.dumps(body).encode(), ()))


def test_a_stray_feed_in_the_store_does_not_become_the_tip(
    km: KeyManager, stellakeys_clock: FrozenClock
) -> None:
    from stellakeys.feed import build_document

    v1 = publish_feed(km, A, include_keys=True).feed
    stray = build_document(
        km,
        FeedConfig(("f3",), 1),
        include_keys=True,
        urgent=False,
        previous=v1,
        now=stellakeys_clock.now(),
    )
    km.sign(stray.to_json(), ["f3"], PAYLOAD_TYPE)  # anyone can sign this payload type in
    assert latest_published(km) == v1
    assert publish_feed(km, A).document.previous == v1.digest


def test_publisher_refuses_when_the_keys_cannot_reach_the_threshold(km: KeyManager) -> None:
    km.import_key("ext", km.get_key("f4").public_key_pem)  # a verify-only copy of a key
    with pytest.raises(FeedError, match="only 0 of the feed keys can sign"):
        publish_feed(km, FeedConfig(("ext",), 1))
    publish_feed(km, A)
    # Moving to keys that v1's keys do not include, without them able to sign, is refused
    # before anything is stored.
    anchor = km.create_anchor("pkg:maven/*", ["f1", "f2"], [EVIDENCE])
    km.revoke_key(anchor.anchor_id, "f1", COMPROMISE)
    with pytest.raises(FeedError, match="feed keys of version 1 can sign"):
        publish_feed(km, B)
    latest = latest_published(km)
    assert latest is not None and latest.document.version == 1


def test_verify_offline_from_the_feed(km: KeyManager, stellakeys_clock: FrozenClock) -> None:
    proof = km.get_proof(km.sign(statement("pkg:npm/left-pad@1.3.0"), ["k1"]))
    signed_at = stellakeys_clock.now()
    stellakeys_clock.advance(timedelta(days=1))
    anchor = km.list_anchors()[0]
    km.revoke_key(anchor.anchor_id, "k1", "annual-rotation", stellakeys_clock.now())
    feed = publish_feed(km, A, include_keys=True).feed

    offline = manager_from_feed(parse_feed(feed.envelope.to_json()).document)
    ok = offline.verify(proof, at=signed_at)
    assert ok.ok and ok.key_id == "k1" and ok.anchor_id == anchor.anchor_id
    assert not offline.verify(proof).ok  # now: after the revocation
    expected = km.verify(proof, at=signed_at)
    assert (ok.ok, ok.anchor_pattern, ok.policy_version) == (
        expected.ok,
        expected.anchor_pattern,
        expected.policy_version,
    )
    with pytest.raises(FeedError, match="without --include-keys"):
        manager_from_feed(publish_feed(km, A).document)


# --- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli_home(km: KeyManager, stellakeys_home: Path) -> Path:
    config = {"feed": {"keyIds": ["f1", "f2"], "threshold": 2, "expiresIn": "30d"}}
    (stellakeys_home / "signer.yaml").write_text(yaml.safe_dump(config))
    return stellakeys_home


def run(*args: str, ok: bool = True) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_cli_publish_trust_update_and_verify_with_the_feed(
    km: KeyManager, cli_home: Path, tmp_path: Path
) -> None:
    proof = km.sign(statement("pkg:npm/x@1"), ["k1"])
    envelope = tmp_path / "proof.json"
    envelope.write_bytes(km.get_proof(proof).to_json())
    km.close()
    feed1, feed2 = tmp_path / "feed-1.json", tmp_path / "feed-2.json"
    published = run("feed", "publish", "--include-keys", "--output", str(feed1))
    assert "Feed version 1" in published.output
    run("feed", "publish", "--include-keys", "--urgent", "--output", str(feed2))
    state = tmp_path / "state"
    pinned = run("feed", "trust", str(feed1), "--feed-state", str(state)).output
    assert "f1 ed25519 SHA256:" in pinned and "2 of 2 required" in pinned

    result = run("verify", "--envelope", str(envelope), "--feed", str(feed2))
    assert result.stdout.startswith("OK:")
    assert "checked against its own keys only" in result.stderr
    result = run(
        "verify", "--envelope", str(envelope), "--feed", str(feed2), "--feed-state", str(state)
    )
    assert "OK:" in result.output
    assert json.loads((state / "trusted.json").read_bytes())["payloadType"] == PAYLOAD_TYPE
    # (main() turns this into "error: rollback refused ..." and exit status 1.)
    with pytest.raises(FeedError, match="rollback refused"):
        run("verify", "--envelope", str(envelope), "--feed", str(feed1), "--feed-state", str(state))

    batch = tmp_path / "batch.jsonl"
    batch.write_text(envelope.read_text() + "\n" + json.dumps({"proof": proof}) + "\n")
    result = run("verify", "--batch", str(batch), "--feed", str(feed2), "--json", ok=False)
    *rows, last = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["ok"] for r in rows] == [True, False]  # the address needs the store: not here
    assert last["summary"]["failed"] == 1
    assert "no proof" in rows[1]["error"]
    shown = json.loads(run("feed", "show", str(feed2), "--json").output)
    assert shown["version"] == 2 and shown["urgent"] is True

"""The key rotation runbook's timeline, end to end through KeyManager, on memory and SQLite.

key-2024 added 2024-01-15, key-2025 added 2024-06-15, key-2024 revoked 2025-01-15.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stellakeys import (
    ALL_ANCHORS,
    ConflictError,
    FrozenClock,
    KeyManager,
    MalformedPurlError,
    PolicyError,
    Statement,
    Subject,
    TimeSource,
    VerificationPolicy,
)
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore

US = timedelta(microseconds=1)
JAN_15_2024 = datetime(2024, 1, 15, tzinfo=UTC)
JUN_15_2024 = datetime(2024, 6, 15, tzinfo=UTC)
JAN_15_2025 = datetime(2025, 1, 15, tzinfo=UTC)
EVIDENCE = "evidence.stella/v1"


def statement(purl: str, predicate_type: str = EVIDENCE) -> bytes:
    return Statement((Subject(purl, {"sha256": "ab" * 32}),), predicate_type, {"n": 1}).to_json()


@pytest.fixture(params=["memory", "sqlite"])
def km(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "timeline-test-passphrase")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = MemoryStore() if request.param == "memory" else SqliteStore.open_home(home)
    clock = FrozenClock(datetime(2024, 1, 10, tzinfo=UTC))
    manager = KeyManager(
        store, clock=clock, actor="tester", keystore_context=KeyStoreContext(home=home)
    )
    yield manager
    manager.close()


def clock_of(km: KeyManager) -> FrozenClock:
    assert isinstance(km.clock, FrozenClock)
    return km.clock


@pytest.fixture
def timeline(km: KeyManager) -> dict[str, object]:
    clock = clock_of(km)
    km.generate_key("key-2024-prod")
    clock.set(JAN_15_2024)
    anchor = km.create_anchor("pkg:npm/*", ["key-2024-prod"], [EVIDENCE], "v2.3.1")
    clock.set(JAN_15_2024 + timedelta(days=30))
    old_proof = km.sign(statement("pkg:npm/left-pad@1.3.0"), "key-2024-prod")
    clock.set(datetime(2024, 6, 1, tzinfo=UTC))
    km.generate_key("key-2025-prod")
    clock.set(JUN_15_2024)
    km.add_key(anchor.anchor_id, "key-2025-prod")
    clock.set(datetime(2024, 9, 1, tzinfo=UTC))
    new_proof = km.sign(statement("pkg:npm/left-pad@1.3.1"), "key-2025-prod")
    km.revoke_key(anchor.anchor_id, "key-2024-prod", "annual-rotation", JAN_15_2025)
    clock.set(datetime(2025, 3, 1, tzinfo=UTC))
    return {"anchor": anchor.anchor_id, "old": old_proof, "new": new_proof}


@pytest.mark.parametrize(
    ("at", "ok"),
    [
        (JAN_15_2024 - US, False),  # before the key joined the anchor
        (JAN_15_2024, True),  # half-open window includes its start
        (JUN_15_2024 + timedelta(days=60), True),  # overlap
        (JAN_15_2025 - US, True),  # last instant before revocation
        (JAN_15_2025, False),  # revocation instant excluded
        (JAN_15_2025 + timedelta(days=10), False),  # after revocation
    ],
)
def test_old_key_window_is_half_open(
    km: KeyManager, timeline: dict[str, object], at: datetime, ok: bool
) -> None:
    result = km.verify(str(timeline["old"]), at=at)
    assert result.ok is ok, result.reasons
    assert result.time == at and result.time_source is TimeSource.ASSERTED
    assert result.anchor_id == timeline["anchor"]
    if ok:
        assert result.key_id == "key-2024-prod"
        assert result.algorithm == "ed25519"
        assert result.reasons == ()
    else:
        assert result.reasons and "key-2024-prod" in result.reasons[0]


@pytest.mark.parametrize(
    ("at", "ok"),
    [
        (JUN_15_2024 - US, False),
        (JUN_15_2024, True),
        (JAN_15_2025, True),  # the old key's revocation does not touch the new one
    ],
)
def test_new_key_window(
    km: KeyManager, timeline: dict[str, object], at: datetime, ok: bool
) -> None:
    result = km.verify(str(timeline["new"]), at=at)
    assert result.ok is ok, result.reasons
    if ok:
        assert result.key_id == "key-2025-prod"


def test_now_is_the_default_time_and_is_reported(
    km: KeyManager, timeline: dict[str, object]
) -> None:
    old = km.verify(str(timeline["old"]))
    assert not old.ok
    assert old.time_source is TimeSource.NOW and old.time == km.clock.now()
    assert any("revoked at 2025-01-15T00:00:00Z" in r for r in old.reasons)
    assert km.verify(str(timeline["new"])).ok


def test_anchor_views_follow_history(km: KeyManager, timeline: dict[str, object]) -> None:
    anchor = km.get_anchor(str(timeline["anchor"]))
    before, after = JAN_15_2025 - US, JAN_15_2025
    assert anchor.allowed_keyids(before) == ("key-2024-prod", "key-2025-prod")
    assert anchor.allowed_keyids(after) == ("key-2025-prod",)
    assert anchor.revoked_keys(after) == ("key-2024-prod",)
    doc = anchor.to_dict(after)
    assert doc["keyHistory"][0]["revokeReason"] == "annual-rotation"
    assert doc["keyHistory"][0]["revokedAt"] == "2025-01-15T00:00:00Z"


def test_check_validity(km: KeyManager, timeline: dict[str, object]) -> None:
    assert km.check_validity("key-2024-prod", datetime(2024, 6, 15, 12, tzinfo=UTC)).valid
    assert not km.check_validity("key-2024-prod", JAN_15_2025).valid
    assert not km.check_validity("key-2025-prod", JUN_15_2024 - US).valid


def test_scheduled_revocation_takes_effect_when_due(km: KeyManager) -> None:
    clock = clock_of(km)
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    due = clock.now() + timedelta(days=7)
    km.revoke_key(anchor.anchor_id, "k", "annual-rotation", due)
    proof = km.sign(statement("pkg:npm/a@1"), "k")
    assert km.verify(proof).ok  # scheduled, not yet effective
    assert km.get_anchor(anchor.anchor_id).allowed_keyids(clock.now()) == ("k",)
    clock.set(due)
    assert not km.verify(proof).ok
    assert km.verify(proof, at=due - US).ok
    with pytest.raises(PolicyError):
        km.sign(statement("pkg:npm/a@2"), "k")


def test_revocation_can_be_brought_forward_never_postponed(km: KeyManager) -> None:
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    now = km.clock.now()
    km.revoke_key(anchor.anchor_id, "k", "annual-rotation", now + timedelta(days=7))
    with pytest.raises(ConflictError):
        km.revoke_key(anchor.anchor_id, "k", "annual-rotation", now + timedelta(days=30))
    km.revoke_key(anchor.anchor_id, "k", "superseded", now + timedelta(days=1))
    entry = km.get_anchor(anchor.anchor_id).entry("k")
    assert entry is not None and entry.revoked_at == now + timedelta(days=1)


def test_emergency_revocation_of_all_anchors(km: KeyManager) -> None:
    clock = clock_of(km)
    km.generate_key("stolen")
    km.generate_key("other")
    npm = km.create_anchor("pkg:npm/*", ["stolen", "other"], [EVIDENCE])
    maven = km.create_anchor("pkg:maven/*", ["stolen"], [EVIDENCE])
    unrelated = km.create_anchor("pkg:pypi/*", ["other"], [EVIDENCE])
    signed_at = clock.now() + timedelta(days=1)
    clock.set(signed_at)
    npm_proof = km.sign(statement("pkg:npm/x@1"), "stolen")
    maven_proof = km.sign(statement("pkg:maven/org.x/y@1"), "stolen")
    clock.advance(timedelta(days=1))
    changed = km.revoke_key(ALL_ANCHORS, "stolen", "compromise")
    assert set(changed) == {npm.anchor_id, maven.anchor_id}
    assert unrelated.anchor_id not in changed
    for proof in (npm_proof, maven_proof):
        # A stolen key can back-date: asserted time before the revocation is not enough.
        result = km.verify(proof, at=signed_at)
        assert not result.ok
        assert any("compromise" in r and "trusted timestamp" in r for r in result.reasons)
    with pytest.raises(PolicyError):
        km.sign(statement("pkg:npm/x@2"), "stolen")
    # Emergency replacement added to all active anchors at once.
    km.generate_key("emergency-key")
    added = km.add_key(ALL_ANCHORS, "emergency-key")
    assert set(added) == {npm.anchor_id, maven.anchor_id, unrelated.anchor_id}
    assert km.verify(km.sign(statement("pkg:maven/org.x/y@2"), "emergency-key")).ok


def test_most_specific_anchor_applies(km: KeyManager) -> None:
    for k in ("universal", "npm", "angular"):
        km.generate_key(k)
    km.create_anchor("*", ["universal"], [EVIDENCE])
    km.create_anchor("pkg:npm/*", ["npm"], [EVIDENCE])
    angular = km.create_anchor("pkg:npm/@angular/*", ["angular"], [EVIDENCE])
    # The npm anchor, not the universal one, governs npm packages.
    assert not km.verify(km.sign(statement("pkg:npm/lodash@4"), "universal")).ok
    assert km.verify(km.sign(statement("pkg:npm/lodash@4"), "npm")).ok
    assert km.verify(km.sign(statement("pkg:maven/org.a/b@1"), "universal")).ok
    result = km.verify(km.sign(statement("pkg:npm/%40angular/core@17"), "angular"))
    assert result.ok and result.anchor_id == angular.anchor_id
    # A caller-given PURL picks the anchor, but it must be a subject of the statement: a
    # proof about lodash is no proof about requests, whatever anchor trusts its key.
    proof = km.sign(statement("pkg:npm/lodash@4"), "universal")
    wrong = km.verify(proof, purl="pkg:pypi/requests@2")
    assert not wrong.ok
    assert wrong.reasons == (
        "pkg:pypi/requests@2 is not a subject of the statement (subjects: pkg:npm/lodash@4)",
    )
    assert km.verify(km.sign(statement("pkg:pypi/requests@2"), "universal")).ok


def test_pattern_ties_and_duplicates_are_refused(km: KeyManager) -> None:
    km.generate_key("k")
    km.create_anchor("pkg:npm/a*", ["k"], [EVIDENCE])
    with pytest.raises(ConflictError, match="ties"):
        km.create_anchor("pkg:npm/*b", ["k"], [EVIDENCE])
    with pytest.raises(ConflictError):
        km.create_anchor("pkg:npm/a*", ["k"], [EVIDENCE])
    with pytest.raises(MalformedPurlError):
        km.create_anchor("npm/*", ["k"], [EVIDENCE])
    assert len(km.list_anchors()) == 1


def test_deactivated_anchor_no_longer_applies(km: KeyManager) -> None:
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    proof = km.sign(statement("pkg:npm/a@1"), "k")
    assert km.verify(proof).ok
    km.deactivate_anchor(anchor.anchor_id)
    result = km.verify(proof)
    assert not result.ok and "no active trust anchor" in result.reasons[0]
    assert km.list_anchors()[0].active is False  # kept, never deleted
    # Its pattern is free again.
    km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])


def test_predicate_type_must_be_allowed(km: KeyManager) -> None:
    km.generate_key("k")
    km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    result = km.verify(km.sign(statement("pkg:npm/a@1", "other.stella/v1"), "k"))
    assert not result.ok
    assert any("predicateType other.stella/v1 is not allowed" in r for r in result.reasons)


def test_threshold_counts_distinct_anchor_keys(km: KeyManager) -> None:
    km.generate_key("a")
    km.generate_key("b")
    km.create_anchor("pkg:npm/*", ["a", "b"], [EVIDENCE])
    one = km.sign(statement("pkg:npm/x@1"), ["a"])
    two = km.sign(statement("pkg:npm/x@1"), ["a", "b"])
    policy = VerificationPolicy(threshold=2)
    assert not km.verify(one, policy=policy).ok
    result = km.verify(two, policy=policy)
    assert result.ok and {k.key_id for k in result.verified_keys} == {"a", "b"}


def test_no_purl_needs_anchor_unless_key_only(km: KeyManager) -> None:
    km.generate_key("k")
    proof = km.sign(b"test\n", "k", payload_type="text/plain")
    strict = km.verify(proof)
    assert not strict.ok and "no artifact PURL" in strict.reasons[0]
    loose = km.verify(proof, policy=VerificationPolicy(require_anchor=False))
    assert loose.ok and loose.key_id == "k" and loose.anchor_id is None
    assert "key-only" in loose.notes[0]


def test_every_change_is_audited_and_chain_verifies(
    km: KeyManager, timeline: dict[str, object]
) -> None:
    types = [e.event_type for e in km.audit_events()]
    assert types.count("KEY_GENERATED") == 2
    assert types.count("KEY_ADDED") == 2
    assert types.count("KEY_REVOKED") == 1
    assert types.count("ANCHOR_CREATED") == 1
    assert types.count("PROOF_SIGNED") == 2
    revoked = next(e for e in km.audit_events() if e.event_type == "KEY_REVOKED")
    assert revoked.actor == "tester"
    assert revoked.key_id == "key-2024-prod" and revoked.anchor_id == timeline["anchor"]
    assert revoked.details["reason"] == "annual-rotation"
    assert km.verify_audit().ok


@pytest.mark.parametrize("tamper", ["change", "remove", "reorder"])
def test_audit_tampering_is_detected(tmp_path: Path, tamper: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    km = KeyManager(
        SqliteStore.open_home(home),
        clock=FrozenClock(datetime(2025, 1, 1, tzinfo=UTC)),
        keystore_context=KeyStoreContext(home=home),
    )
    for i in range(4):
        km.import_key(f"k{i}", km_pem())
    head = km.verify_audit()
    assert head.ok and head.count == 4
    km.close()
    db = sqlite3.connect(home / "stellakeys.db")
    # The triggers stop accidents, not an attacker with the file: drop them as one would.
    with db:
        db.execute("DROP TRIGGER key_audit_log_no_update")
        db.execute("DROP TRIGGER key_audit_log_no_delete")
    with db:
        if tamper == "change":
            db.execute("UPDATE key_audit_log SET actor = 'mallory' WHERE seq = 2")
        elif tamper == "remove":
            db.execute("DELETE FROM key_audit_log WHERE seq = 3")
        else:
            db.execute("UPDATE key_audit_log SET seq = 1000 WHERE seq = 2")
            db.execute("UPDATE key_audit_log SET seq = 2 WHERE seq = 3")
            db.execute("UPDATE key_audit_log SET seq = 3 WHERE seq = 1000")
    db.close()
    km = KeyManager(SqliteStore.open_home(home), keystore_context=KeyStoreContext(home=home))
    result = km.verify_audit()
    km.close()
    assert not result.ok
    # A removed event shows as a gap at the next one; the others break at the altered event.
    assert result.broken_at == {"change": 2, "remove": 4, "reorder": 2}[tamper]
    assert result.count == result.broken_at - 1 - (tamper == "remove")


def test_truncated_audit_log_detected_with_expected_head(km: KeyManager) -> None:
    km.import_key("a", km_pem())
    head = km.verify_audit().head_hash
    km.import_key("b", km_pem())
    assert km.verify_audit(expected_head=km.verify_audit().head_hash).ok
    assert not km.verify_audit(expected_head=head).ok


def km_pem() -> str:
    from stellakeys import get_algorithm

    return get_algorithm("ed25519").generate().public_key().to_pem()


def test_imported_key_verifies_but_cannot_sign(km: KeyManager) -> None:
    from stellakeys import KeyStoreError, get_algorithm
    from stellakeys.dsse import sign_envelope

    private = get_algorithm("ecdsa-p256-sha256").generate()
    record = km.import_key("external", private.public_key().to_pem())
    assert record.algorithm == "ecdsa-p256-sha256" and record.key_store_uri is None
    km.create_anchor("pkg:npm/*", ["external"], [EVIDENCE])
    envelope = sign_envelope(
        "application/vnd.in-toto+json", statement("pkg:npm/a@1"), [private], ["external"]
    )
    assert km.verify(envelope).ok
    with pytest.raises(KeyStoreError):
        km.sign(statement("pkg:npm/a@1"), "external")


def test_unknown_anchor_id_is_a_clean_error(km: KeyManager) -> None:
    from stellakeys import NotFoundError

    with pytest.raises(NotFoundError):
        km.get_anchor(uuid.uuid4())
    with pytest.raises(NotFoundError):
        km.add_key("not-a-uuid", "k")

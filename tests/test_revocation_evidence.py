"""Issue 14, revocation state and stored evidence: compromise cannot be erased (#4), reasons
are a closed vocabulary (#6), a stored proof is checked against its address (#7), and
key_history cannot be un-revoked unnoticed (#10). Each test is what a careless operator or a
hostile insider would do; each fails on main 9603a3d."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stellakeys.anchors import COMPROMISE, KeyHistoryEntry
from stellakeys.audit import AuditQuery, EventType
from stellakeys.clock import FrozenClock
from stellakeys.errors import ConflictError, ProofIntegrityError, UnknownRevocationReasonError
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.manager import KeyManager
from stellakeys.revocation import (
    RevocationReason,
    accepted_reasons,
    is_compromise,
    legacy_reason,
    merge_revocation,
    parse_reason,
)
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import DB_FILENAME, SqliteStore, apply_migrations, load_migrations

EVIDENCE = "evidence.stella/v1"
T0 = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
PASSPHRASE = "revocation-evidence-passphrase"


def statement(purl: str) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": purl, "digest": {"sha256": "ab" * 32}}],
            "predicateType": EVIDENCE,
            "predicate": {},
        }
    ).encode()


@pytest.fixture(params=["memory", "sqlite"])
def km(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = MemoryStore() if request.param == "memory" else SqliteStore.open_home(home)
    manager = KeyManager(
        store, clock=FrozenClock(T0), actor="tester", keystore_context=KeyStoreContext(home=home)
    )
    yield manager
    manager.close()


def clock(km: KeyManager) -> FrozenClock:
    assert isinstance(km.clock, FrozenClock)
    return km.clock


def entry_of(km: KeyManager, anchor_id: object, key_id: str) -> KeyHistoryEntry:
    e = km.get_anchor(anchor_id).entry(key_id)  # type: ignore[arg-type]
    assert e is not None
    return e


# --- the vocabulary (#6) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "compromise",
        "Compromise",
        "compromised",
        "Compromised",
        "COMPROMISED",
        "key-compromise",
        "keyCompromise",
        "KEY_COMPROMISE",
        "key compromise",
        "cACompromise",
    ],
)
def test_every_spelling_of_compromise_is_compromise(spelling: str) -> None:
    assert parse_reason(spelling) is RevocationReason.COMPROMISE
    assert is_compromise(spelling)


@pytest.mark.parametrize(
    ("spelling", "reason"),
    [
        ("annual-rotation", RevocationReason.ANNUAL_ROTATION),
        ("rotation", RevocationReason.ROTATION),
        ("superseded", RevocationReason.SUPERSEDED),
        ("Superseded", RevocationReason.SUPERSEDED),
        ("cessationOfOperation", RevocationReason.CESSATION_OF_OPERATION),
        ("cessation-of-operation", RevocationReason.CESSATION_OF_OPERATION),
        ("affiliationChanged", RevocationReason.AFFILIATION_CHANGED),
        ("privilegeWithdrawn", RevocationReason.PRIVILEGE_WITHDRAWN),
        ("unspecified", RevocationReason.UNSPECIFIED),
    ],
)
def test_runbook_words_and_rfc5280_names(spelling: str, reason: RevocationReason) -> None:
    assert parse_reason(spelling) is reason
    assert not is_compromise(spelling)


@pytest.mark.parametrize("text", ["retired", "certificateHold", "removeFromCRL", "", "annual"])
def test_unknown_reason_is_a_typed_error_listing_the_accepted_ones(text: str) -> None:
    with pytest.raises(UnknownRevocationReasonError) as raised:
        parse_reason(text)
    message = str(raised.value)
    assert all(word in message for word in accepted_reasons())
    assert isinstance(raised.value, ValueError)


def test_compromise_is_the_strongest_reason() -> None:
    strongest = max(RevocationReason, key=lambda r: r.strength)
    assert strongest is RevocationReason.COMPROMISE
    assert all(
        r.strength < RevocationReason.COMPROMISE.strength
        for r in RevocationReason
        if r is not RevocationReason.COMPROMISE
    )
    assert RevocationReason.COMPROMISE.crl_reason == "keyCompromise"


def test_merge_keeps_earliest_time_and_strongest_reason() -> None:
    assert merge_revocation(T0, "compromise", T0 - DAY, "superseded") == (
        T0 - DAY,
        RevocationReason.COMPROMISE,
    )
    assert merge_revocation(T0, "superseded", T0 + DAY, "compromise") == (
        T0,
        RevocationReason.COMPROMISE,
    )
    # Equal strength keeps what is recorded.
    assert merge_revocation(T0, "annual-rotation", T0, "superseded")[1] is (
        RevocationReason.ANNUAL_ROTATION
    )


def test_legacy_free_text_is_read_on_the_safe_side() -> None:
    assert legacy_reason("Key was compromised in CI") is RevocationReason.COMPROMISE
    assert legacy_reason("retired after audit") is RevocationReason.UNSPECIFIED
    assert legacy_reason("Annual Rotation") is RevocationReason.ANNUAL_ROTATION


# --- the manager: compromise is never erased (#4, #3) ---------------------------------------


def test_alias_of_compromise_applies_the_compromise_rule(km: KeyManager) -> None:
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    signed_at = T0 + DAY
    clock(km).set(signed_at)
    proof = km.sign(statement("pkg:npm/a@1"), "k")
    clock(km).set(T0 + 2 * DAY)
    km.revoke_key(anchor.anchor_id, "k", "Compromised")
    assert entry_of(km, anchor.anchor_id, "k").revoke_reason == COMPROMISE
    # A stolen key can back-date: an asserted time before the revocation is not enough.
    assert not km.verify(proof, at=signed_at).ok


def test_unknown_reason_changes_nothing(km: KeyManager) -> None:
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    before = km.audit_events()
    with pytest.raises(UnknownRevocationReasonError):
        km.revoke_key(anchor.anchor_id, "k", "because I said so")
    assert entry_of(km, anchor.anchor_id, "k").revoked_at is None
    assert km.audit_events() == before


def test_compromise_survives_an_earlier_revocation_with_another_reason(km: KeyManager) -> None:
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    clock(km).set(T0 + 2 * DAY)
    proof = km.sign(statement("pkg:npm/a@1"), "k")
    clock(km).set(T0 + 5 * DAY)
    km.revoke_key(anchor.anchor_id, "k", "compromise")
    # The insider's move: "revoke" again, earlier, as a mere supersession.
    km.revoke_key(anchor.anchor_id, "k", "superseded", T0 + 3 * DAY)
    e = entry_of(km, anchor.anchor_id, "k")
    assert (e.revoked_at, e.revoke_reason) == (T0 + 3 * DAY, COMPROMISE)
    assert not km.verify(proof, at=T0 + 2 * DAY).ok  # still needs trusted time
    # A later or equally strong request is refused outright in a named anchor.
    with pytest.raises(ConflictError):
        km.revoke_key(anchor.anchor_id, "k", "superseded", T0 + 4 * DAY)
    assert km.verify_audit().ok


def test_rotation_does_not_downgrade_a_compromise(km: KeyManager) -> None:
    km.generate_key("stolen")
    anchor = km.create_anchor("pkg:npm/*", ["stolen"], [EVIDENCE])
    clock(km).set(T0 + 2 * DAY)
    proof = km.sign(statement("pkg:npm/a@1"), "stolen")
    clock(km).set(T0 + 5 * DAY)
    km.revoke_key(anchor.anchor_id, "stolen", "compromise", T0 + 5 * DAY)
    km.rotate_key(
        "replacement",
        anchor_ids=[anchor.anchor_id],
        replaces="stolen",
        revoke_replaced_at=T0 + 4 * DAY,
        revoke_reason="rotation",
    )
    e = entry_of(km, anchor.anchor_id, "stolen")
    assert (e.revoked_at, e.revoke_reason) == (T0 + 4 * DAY, COMPROMISE)
    assert not km.verify(proof, at=T0 + 2 * DAY).ok
    revoked = km.audit_events(AuditQuery(event_type=EventType.KEY_REVOKED))
    assert revoked[-1].details["reason"] == COMPROMISE
    assert revoked[-1].details["previousReason"] == COMPROMISE
    assert km.verify_audit().ok


def test_a_rotation_for_compromise_reaches_every_anchor(km: KeyManager) -> None:
    km.generate_key("stolen")
    npm = km.create_anchor("pkg:npm/*", ["stolen"], [EVIDENCE])
    maven = km.create_anchor("pkg:maven/*", ["stolen"], [EVIDENCE])
    km.rotate_key(
        "replacement",
        anchor_ids=[npm.anchor_id],
        replaces="stolen",
        revoke_replaced_at=T0,
        revoke_reason="key-compromise",
    )
    for a in (npm, maven):
        e = entry_of(km, a.anchor_id, "stolen")
        assert (e.revoked_at, e.revoke_reason) == (T0, COMPROMISE)
    assert entry_of(km, npm.anchor_id, "replacement").revoked_at is None
    assert km.get_anchor(maven.anchor_id).entry("replacement") is None
    assert km.verify_audit().ok


def test_a_weaker_reason_can_be_escalated(km: KeyManager) -> None:
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    km.revoke_key(anchor.anchor_id, "k", "annual-rotation", T0 + 30 * DAY)
    km.revoke_key(anchor.anchor_id, "k", "keyCompromise", T0 + 40 * DAY)
    e = entry_of(km, anchor.anchor_id, "k")
    assert (e.revoked_at, e.revoke_reason) == (T0 + 30 * DAY, COMPROMISE)


def test_compromise_in_one_anchor_is_recorded_in_every_anchor(km: KeyManager) -> None:
    km.generate_key("k")
    km.generate_key("other")
    npm = km.create_anchor("pkg:npm/*", ["k", "other"], [EVIDENCE])
    maven = km.create_anchor("pkg:maven/*", ["k"], [EVIDENCE])
    pypi = km.create_anchor("pkg:pypi/*", ["k"], [EVIDENCE])
    km.deactivate_anchor(pypi.anchor_id)  # forensics still reads inactive anchors
    unrelated = km.create_anchor("pkg:gem/*", ["other"], [EVIDENCE])
    clock(km).set(T0 + DAY)
    maven_proof = km.sign(statement("pkg:maven/org.x/y@1"), "k")
    clock(km).set(T0 + 3 * DAY)
    changed = km.revoke_key(npm.anchor_id, "k", "compromise", T0 + 2 * DAY)
    assert set(changed) == {npm.anchor_id, maven.anchor_id, pypi.anchor_id}
    for a in (npm, maven, pypi):
        e = entry_of(km, a.anchor_id, "k")
        assert (e.revoked_at, e.revoke_reason) == (T0 + 2 * DAY, COMPROMISE)
    assert entry_of(km, unrelated.anchor_id, "other").revoked_at is None
    # The anchored path of anchor B now applies the compromise rule too.
    assert not km.verify(maven_proof, at=T0 + DAY).ok
    events = km.audit_events(AuditQuery(event_type=EventType.KEY_REVOKED))
    assert {e.anchor_id for e in events} == {npm.anchor_id, maven.anchor_id, pypi.anchor_id}
    via = [e for e in events if e.details.get("compromiseRecordedVia")]
    assert {e.anchor_id for e in via} == {maven.anchor_id, pypi.anchor_id}
    assert km.verify_audit().ok


def test_a_routine_revocation_stays_per_anchor(km: KeyManager) -> None:
    km.generate_key("k")
    npm = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    maven = km.create_anchor("pkg:maven/*", ["k"], [EVIDENCE])
    assert km.revoke_key(npm.anchor_id, "k", "superseded") == [npm.anchor_id]
    assert entry_of(km, maven.anchor_id, "k").revoked_at is None


# --- SQLite: the schema is evidence (#7, #10) ------------------------------------------------


@pytest.fixture
def sqlite_km(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    manager = KeyManager(
        SqliteStore.open_home(home),
        clock=FrozenClock(T0),
        actor="tester",
        keystore_context=KeyStoreContext(home=home),
    )
    yield manager
    manager.close()


def db_of(km: KeyManager) -> Path:
    assert isinstance(km.store, SqliteStore)
    return Path(km.store.path)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=30)


def test_sqlite_refuses_unrevocation_downgrade_and_postponement(sqlite_km: KeyManager) -> None:
    km = sqlite_km
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    km.revoke_key(anchor.anchor_id, "k", "compromise", T0 + DAY)
    attacks = [
        "UPDATE key_history SET revoked_at = NULL",
        "UPDATE key_history SET revoked_at = NULL, revoke_reason = NULL",
        "UPDATE key_history SET revoke_reason = 'superseded'",
        "UPDATE key_history SET revoke_reason = 'Compromised'",
        "UPDATE key_history SET revoked_at = revoked_at + 1",
        "UPDATE key_history SET key_id = 'other'",
    ]
    with raw(db_of(km)) as conn:
        for attack in attacks:
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(attack)
        conn.execute("UPDATE key_history SET revoked_at = revoked_at - 1")  # earlier: allowed
    e = entry_of(km, anchor.anchor_id, "k")
    assert e.revoke_reason == COMPROMISE and e.revoked_at == T0 + DAY - timedelta(microseconds=1)


def test_sqlite_proofs_are_append_only(sqlite_km: KeyManager) -> None:
    km = sqlite_km
    km.generate_key("k")
    km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    digest = km.sign(statement("pkg:npm/a@1"), "k")
    other = km.get_proof(km.sign(statement("pkg:npm/evil@6.6.6"), "k")).to_json()
    with raw(db_of(km)) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE proofs SET envelope_json = ? WHERE digest = ?", (other, digest))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM proofs WHERE digest = ?", (digest,))
    assert km.verify(digest).ok


def replace_stored_proof(path: Path, digest: str, body: bytes) -> None:
    """The insider with DDL rights: drop the guard (absent on main), swap the bytes."""
    with raw(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS proofs_no_update")
        conn.execute("UPDATE proofs SET envelope_json = ? WHERE digest = ?", (body, digest))


def test_a_replaced_stored_proof_fails_naming_both_digests(sqlite_km: KeyManager) -> None:
    km = sqlite_km
    km.generate_key("k")
    km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    digest = km.sign(statement("pkg:npm/lodash@4.17.21"), "k")
    other_digest = km.sign(statement("pkg:npm/evil@6.6.6"), "k")
    replace_stored_proof(db_of(km), digest, km.get_proof(other_digest).to_json())
    with pytest.raises(ProofIntegrityError) as raised:
        km.verify(digest)
    assert digest in str(raised.value) and other_digest in str(raised.value)
    with pytest.raises(ProofIntegrityError):
        km.get_proof(digest)
    with pytest.raises(ProofIntegrityError), km.store.read() as tx:
        list(tx.iter_proofs())


def unrevoke_behind_the_back(path: Path) -> None:
    """The insider with DDL rights: drop the guards (absent on main), un-revoke."""
    with raw(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS key_history_only_stricter")
        conn.execute("UPDATE key_history SET revoked_at = NULL, revoke_reason = NULL")


def test_audit_verify_detects_an_unrevocation_made_with_the_triggers_dropped(
    sqlite_km: KeyManager,
) -> None:
    km = sqlite_km
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    km.revoke_key(anchor.anchor_id, "k", "compromise", T0 + DAY)
    assert km.verify_audit().ok
    unrevoke_behind_the_back(db_of(km))
    result = km.verify_audit()
    assert not result.ok
    assert result.broken_at is None  # the chain itself is intact: only the tables changed
    text = "\n".join(result.state_differences)
    assert f"key_history {anchor.anchor_id}/k" in text
    assert "revokedAt" in text and "revokeReason" in text and "'compromise'" in text


def test_audit_verify_detects_rows_and_fields_changed_behind_its_back(
    sqlite_km: KeyManager,
) -> None:
    km = sqlite_km
    km.generate_key("k")
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    with raw(db_of(km)) as conn:
        conn.execute("UPDATE trust_anchors SET purl_pattern = 'pkg:npm/evil*'")
        conn.execute("UPDATE keys SET fingerprint = 'SHA256:' || hex(randomblob(32))")
        conn.execute(
            "INSERT INTO keys (key_id, algorithm, public_key, fingerprint, created_at, origin)"
            " VALUES ('ghost', 'ed25519', 'x', 'SHA256:00', 0, 'imported')"
        )
    differences = km.verify_audit().state_differences
    assert any(f"anchor {anchor.anchor_id}: purlPattern" in d for d in differences)
    assert any("key k: fingerprint" in d for d in differences)
    assert any("key ghost: row" in d for d in differences)


# --- migration of existing stores -------------------------------------------------------------

LEGACY_TEXTS = [
    "compromise",
    "Compromised",
    "key-compromise",
    "KEY_COMPROMISE",
    "keyCompromise",
    "annual-rotation",
    "Annual Rotation",
    "rotation",
    "superseded",
    "cessationOfOperation",
    "retired after the audit",
    "private key found in CI logs, compromised",
    "x",
]


def test_migration_normalises_free_text_reasons_like_legacy_reason(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    conn = raw(path)
    (ours,) = [m for m in load_migrations() if m.name == "revocation_evidence"]
    before = [m for m in load_migrations() if m.version < ours.version]
    apply_migrations(conn, before)
    conn.execute(
        "INSERT INTO trust_anchors (id, purl_pattern, policy_version, created_at, index_key)"
        " VALUES ('00000000-0000-0000-0000-000000000001', 'pkg:npm/*', 'v1', 0, 'npm')"
    )
    for i, text in enumerate(LEGACY_TEXTS):
        conn.execute(
            "INSERT INTO key_history (id, anchor_id, key_id, public_key, algorithm,"
            " fingerprint, added_at, revoked_at, revoke_reason)"
            " VALUES (?, '00000000-0000-0000-0000-000000000001', ?, 'pem', 'ed25519', 'fp',"
            " 0, 10, ?)",
            (str(uuid.uuid4()), f"k{i}", text),
        )
    conn.close()
    store = SqliteStore(path)
    try:
        with store.read() as tx:
            rows = [tx.history_of_key(f"k{i}")[0] for i in range(len(LEGACY_TEXTS))]
        for text, e in zip(LEGACY_TEXTS, rows, strict=True):
            assert e.revoke_reason == legacy_reason(text).value, text
            if text != e.revoke_reason:
                assert e.metadata == {"revokeReasonText": text}
            else:
                assert e.metadata == {}
    finally:
        store.close()


# --- the CLI as a subprocess ----------------------------------------------------------------


def stellaops(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_ACTOR": "ops@example.com",
    }
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        capture_output=True,
        text=True,
        input=input,
        env=env,
        timeout=120,
    )


@pytest.fixture
def cli_home(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "cli-home"
    home.mkdir(mode=0o700)
    for key_id in ("k", "other"):
        assert stellaops(home, "key", "generate", "--key-id", key_id).returncode == 0
    created = stellaops(
        home,
        "anchor",
        "create",
        "--purl-pattern",
        "pkg:npm/*",
        "--key-ids",
        "k,other",
        "--predicate-types",
        EVIDENCE,
        "--json",
    )
    assert created.returncode == 0, created.stderr
    return home, json.loads(created.stdout)["trustAnchorId"]


@pytest.mark.parametrize("spelling", ["Compromised", "key-compromise", "keyCompromise"])
def test_cli_reads_every_spelling_of_compromise(cli_home: tuple[Path, str], spelling: str) -> None:
    home, anchor_id = cli_home
    done = stellaops(
        home, "anchor", "revoke-key", "--anchor-id", anchor_id, "--key-id", "k",
        "--reason", spelling, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["reason"] == "compromise"
    assert [r["revokeReason"] for r in out["revocations"]] == ["compromise"]


def test_cli_unknown_reason_is_one_line_listing_the_accepted(cli_home: tuple[Path, str]) -> None:
    home, anchor_id = cli_home
    done = stellaops(
        home, "anchor", "revoke-key", "--anchor-id", anchor_id, "--key-id", "k",
        "--reason", "because",
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "--reason" in lines[0] and "'because'" in lines[0]
    assert all(word in lines[0] for word in accepted_reasons())


def test_cli_compromise_cannot_be_downgraded(cli_home: tuple[Path, str]) -> None:
    home, anchor_id = cli_home
    base = ("anchor", "revoke-key", "--anchor-id", anchor_id, "--key-id", "k")
    first = stellaops(
        home, *base, "--reason", "compromise", "--effective-at", "2024-06-01T00:00:00Z"
    )
    assert first.returncode == 0, first.stderr
    again = stellaops(
        home, *base, "--reason", "superseded", "--effective-at", "2024-05-01T00:00:00Z", "--json"
    )
    assert again.returncode == 0, again.stderr
    (rev,) = json.loads(again.stdout)["revocations"]
    assert rev == {
        "anchorId": anchor_id,
        "revokedAt": "2024-05-01T00:00:00Z",
        "revokeReason": "compromise",
    }


def test_cli_audit_verify_reports_an_unrevocation(cli_home: tuple[Path, str]) -> None:
    home, anchor_id = cli_home
    revoked = stellaops(
        home, "anchor", "revoke-key", "--anchor-id", anchor_id, "--key-id", "k",
        "--reason", "compromise", "--effective-at", "2024-06-01T00:00:00Z",
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    assert stellaops(home, "audit", "verify").returncode == 0
    unrevoke_behind_the_back(home / DB_FILENAME)
    done = stellaops(home, "audit", "verify")
    assert done.returncode == 1
    assert "STATE DIFFERS" in done.stdout
    assert f"key_history {anchor_id}/k: revokedAt" in done.stdout
    as_json = json.loads(stellaops(home, "audit", "verify", "--json").stdout)
    assert not as_json["ok"] and as_json["stateChecked"] and as_json["stateDifferences"]
    # --chain-only is the old check: the chain itself is intact.
    assert stellaops(home, "audit", "verify", "--chain-only").returncode == 0


def test_cli_verify_of_a_replaced_stored_proof_fails(cli_home: tuple[Path, str]) -> None:
    home, _ = cli_home

    def sign(purl: str) -> str:
        done = stellaops(home, "sign", "--key-id", "k", input=statement(purl).decode())
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    digest = sign("pkg:npm/lodash@4.17.21")
    other = sign("pkg:npm/evil@6.6.6")
    assert stellaops(home, "verify", "--proof-bundle", digest).returncode == 0
    with raw(home / DB_FILENAME) as conn:
        (body,) = conn.execute("SELECT envelope_json FROM proofs WHERE digest = ?", (other,))
    replace_stored_proof(home / DB_FILENAME, digest, body[0])
    done = stellaops(home, "verify", "--proof-bundle", digest, "--json")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert digest in done.stderr and other in done.stderr

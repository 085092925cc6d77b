"""Issue 14, the verifier's half: what a hostile signer could make verify on 9603a3d.

Each test is an attack that verified (ok, exit 0) there, now refused at the verifier: subject
binding (#1), every subject judged (#2), no key-only fallback for in-toto payloads (#3),
compromise as a fact about the key in every path (#5) and the threshold rule (#11). Each is
checked through the library and, where a command exists, through ``stellaops`` as a
subprocess on the same SQLite home.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from stellakeys import FrozenClock, KeyManager, Statement, Subject, VerificationPolicy
from stellakeys.crypto import get_algorithm
from stellakeys.dsse import sign_envelope
from stellakeys.errors import PolicyError, UnverifiablePayloadError
from stellakeys.intoto import PAYLOAD_TYPE
from stellakeys.storage.sqlite import DB_FILENAME

PASSPHRASE = "binding-test-passphrase"
EVIDENCE = "evidence.stella/v1"
T0 = datetime(2024, 1, 15, tzinfo=UTC)
SIGNED = T0 + timedelta(days=30)
#: Asserted times for CLI checks: the tests never depend on today's date.
AT = "2024-03-01T00:00:00Z"
DIGEST = {"sha256": "ab" * 32}


def statement(*names: str, statement_type: str | None = None) -> bytes:
    obj = Statement(tuple(Subject(n, DIGEST) for n in names), EVIDENCE, {"n": 1}).to_dict()
    if statement_type is not None:
        obj["_type"] = statement_type
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def km(home: Path) -> Iterator[KeyManager]:
    """A manager on the SQLite home the CLI subprocesses read, with a frozen clock."""
    manager = KeyManager.open(home, clock=FrozenClock(T0 - timedelta(days=1)))
    yield manager
    manager.close()


def at(km: KeyManager, when: datetime) -> None:
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    clock.set(when)


def cli(home: Path, *args: str) -> tuple[int, dict[str, Any] | str]:
    env = {
        **os.environ,
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_ACTOR": "attacker@example.com",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    out = proc.stdout.decode()
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()
    try:
        return proc.returncode, json.loads(out)
    except ValueError:
        return proc.returncode, out + proc.stderr.decode()


def envelope_cli(home: Path, path: Path, when: str = AT) -> tuple[int, dict[str, Any]]:
    code, out = cli(home, "verify", "--envelope", str(path), "--at-time", when, "--json")
    assert isinstance(out, dict), out
    return code, out


def verify_cli(home: Path, digest: str, *args: str, when: str = AT) -> tuple[int, dict[str, Any]]:
    code, out = cli(home, "verify", "--proof-bundle", digest, "--at-time", when, "--json", *args)
    assert isinstance(out, dict), out
    return code, out


def setup_keys(km: KeyManager, *keys: str) -> None:
    for k in keys:
        km.generate_key(k)


# --- #1: the artifact is bound ------------------------------------------------------------------


def test_proof_for_one_artifact_is_no_proof_for_another(km: KeyManager, home: Path) -> None:
    setup_keys(km, "npm-key")
    at(km, T0)
    km.create_anchor("pkg:npm/*", ["npm-key"], [EVIDENCE])
    at(km, SIGNED)
    proof = km.sign(statement("pkg:npm/lodash@4.17.21"), "npm-key")

    forged = km.verify(proof, purl="pkg:npm/evil@6.6.6")
    assert not forged.ok
    assert forged.reasons == (
        "pkg:npm/evil@6.6.6 is not a subject of the statement (subjects: pkg:npm/lodash@4.17.21)",
    )
    assert [(s.purl, s.ok) for s in forged.subjects] == [("pkg:npm/evil@6.6.6", False)]
    honest = km.verify(proof, purl="pkg:npm/lodash@4.17.21")
    assert honest.ok, honest.reasons
    assert [(s.purl, s.key_ids) for s in honest.subjects] == [
        ("pkg:npm/lodash@4.17.21", ("npm-key",))
    ]

    code, out = verify_cli(home, proof, "--purl", "pkg:npm/evil@6.6.6")
    assert code == 1 and out["ok"] is False
    assert "is not a subject of the statement" in out["reasons"][0]
    code, out = verify_cli(home, proof, "--purl", "pkg:npm/lodash@4.17.21")
    assert code == 0 and out["subjects"][0]["keyIds"] == ["npm-key"]


@pytest.mark.parametrize(
    ("subject", "requested", "ok"),
    [
        # packageurl normalisation: the type is case-insensitive, '@' in a namespace encoded.
        ("pkg:npm/lodash@4.17.21", "pkg:NPM/lodash@4.17.21", True),
        ("pkg:npm/%40angular/core@17.0.0", "pkg:npm/@angular/core@17.0.0", True),
        ("pkg:pypi/Django_Rest@3.0", "pkg:pypi/django-rest@3.0", True),
        # A versionless subject covers only a versionless request, and the reverse.
        ("pkg:npm/lodash", "pkg:npm/lodash@4.17.21", False),
        ("pkg:npm/lodash@4.17.21", "pkg:npm/lodash", False),
        ("pkg:npm/lodash", "pkg:npm/lodash", True),
        # Qualifiers and subpath are part of the artifact.
        ("pkg:npm/lodash@4.17.21?arch=x86", "pkg:npm/lodash@4.17.21", False),
        ("pkg:npm/lodash@4.17.21#dist", "pkg:npm/lodash@4.17.21#src", False),
    ],
)
def test_binding_compares_normalised_package_urls(
    km: KeyManager, subject: str, requested: str, ok: bool
) -> None:
    setup_keys(km, "k")
    at(km, T0)
    km.create_anchor("*", ["k"], [EVIDENCE])
    at(km, SIGNED)
    result = km.verify(km.sign(statement(subject), "k"), purl=requested)
    assert result.ok is ok, result.reasons
    if not ok:
        assert "is not a subject" in result.reasons[0]


def test_a_payload_naming_no_artifact_is_no_proof_for_one(km: KeyManager) -> None:
    setup_keys(km, "k")
    at(km, T0)
    km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    at(km, SIGNED)
    proof = km.sign(b"just bytes", "k", "application/octet-stream")
    result = km.verify(proof, purl="pkg:npm/lodash@4.17.21")
    assert not result.ok
    assert "pkg:npm/lodash@4.17.21 is not a subject: the payload names no artifact" in (
        result.reasons
    )


# --- #2: every subject is judged ----------------------------------------------------------------


@pytest.fixture
def narrow(km: KeyManager) -> dict[str, Any]:
    """'mine-key' is trusted for pkg:npm/mine only; 'npm-key' for the rest of npm."""
    setup_keys(km, "mine-key", "npm-key")
    at(km, T0)
    mine = km.create_anchor("pkg:npm/mine", ["mine-key"], [EVIDENCE])
    npm = km.create_anchor("pkg:npm/*", ["npm-key"], [EVIDENCE])
    at(km, SIGNED)
    return {"mine": mine.anchor_id, "npm": npm.anchor_id}


def test_a_narrow_key_cannot_attest_a_second_subject(
    km: KeyManager, home: Path, narrow: dict[str, Any]
) -> None:
    proof = km.sign(statement("pkg:npm/mine@1", "pkg:npm/lodash@4.17.21"), "mine-key")
    result = km.verify(proof)
    assert not result.ok
    assert [(s.purl, s.ok, s.anchor_id, s.key_ids) for s in result.subjects] == [
        ("pkg:npm/mine@1", True, narrow["mine"], ("mine-key",)),
        ("pkg:npm/lodash@4.17.21", False, narrow["npm"], ()),
    ]
    assert any(r.startswith("subject pkg:npm/lodash@4.17.21: ") for r in result.reasons)
    # Asking about the subject the key does cover still works: that is what it attested.
    assert km.verify(proof, purl="pkg:npm/mine@1").ok

    code, out = verify_cli(home, proof)
    assert code == 1 and out["ok"] is False
    assert [(s["purl"], s["ok"]) for s in out["subjects"]] == [
        ("pkg:npm/mine@1", True),
        ("pkg:npm/lodash@4.17.21", False),
    ]
    code, text = cli(home, "verify", "--proof-bundle", proof, "--at-time", AT)
    assert code == 1 and "Subject:   pkg:npm/lodash@4.17.21 NOT COVERED" in str(text)


def test_each_subject_covered_by_its_own_anchor_verifies(
    km: KeyManager, home: Path, narrow: dict[str, Any]
) -> None:
    proof = km.sign(
        statement("pkg:npm/mine@1", "pkg:npm/lodash@4.17.21", "pkg:NPM/mine@1"),
        ["mine-key", "npm-key"],
    )
    result = km.verify(proof)
    assert result.ok, result.reasons
    # Two spellings of one PURL are one subject.
    assert [(s.purl, s.anchor_id, s.key_ids) for s in result.subjects] == [
        ("pkg:npm/mine@1", narrow["mine"], ("mine-key",)),
        ("pkg:npm/lodash@4.17.21", narrow["npm"], ("npm-key",)),
    ]
    code, out = verify_cli(home, proof)
    assert code == 0, out
    assert [(s["anchorId"], s["keyIds"]) for s in out["subjects"]] == [
        (str(narrow["mine"]), ["mine-key"]),
        (str(narrow["npm"]), ["npm-key"]),
    ]


def test_non_purl_subjects_need_the_universal_anchor(km: KeyManager, home: Path) -> None:
    setup_keys(km, "npm-key", "root-key")
    at(km, T0)
    km.create_anchor("pkg:npm/*", ["npm-key"], [EVIDENCE])
    at(km, SIGNED)
    # On 9603a3d a statement about a file name fell back to a key-only check: exit 0.
    proof = km.sign(statement("lodash-4.17.21.tgz"), "npm-key")
    result = km.verify(proof)
    assert not result.ok and not result.key_only
    assert "only a universal '*' trust anchor can cover it" in result.reasons[0]
    code, out = verify_cli(home, proof)
    assert code == 1 and out["keyOnly"] is False
    # A malformed pkg: name is not a package URL either (on main it was skipped).
    mixed = km.sign(statement("pkg:npm/ok@1", "pkg:npm/"), "npm-key")
    assert not km.verify(mixed).ok

    at(km, SIGNED + timedelta(days=1))
    universal = km.create_anchor("*", ["root-key"], [EVIDENCE])
    at(km, SIGNED + timedelta(days=2))
    by_root = km.sign(statement("lodash-4.17.21.tgz", "pkg:pypi/x@1"), "root-key")
    ok = km.verify(by_root)
    assert ok.ok, ok.reasons
    assert [(s.name, s.purl, s.anchor_id) for s in ok.subjects] == [
        ("lodash-4.17.21.tgz", None, universal.anchor_id),
        ("pkg:pypi/x@1", "pkg:pypi/x@1", universal.anchor_id),
    ]
    # The npm key is still not trusted for arbitrary names.
    assert not km.verify(km.sign(statement("lodash-4.17.21.tgz"), "npm-key")).ok


# --- #3: an in-toto payload must parse ----------------------------------------------------------


def test_statement_v01_is_judged_not_key_only(km: KeyManager, home: Path) -> None:
    setup_keys(km, "pypi-key")
    at(km, T0)
    km.create_anchor("pkg:pypi/*", ["pypi-key"], [EVIDENCE])
    at(km, SIGNED)
    v01 = "https://in-toto.io/Statement/v0.1"
    proof = km.sign(statement("pkg:npm/lodash@4.17.21", statement_type=v01), "pypi-key")
    lax = VerificationPolicy(require_anchor=False)  # the CLI's default
    result = km.verify(proof, policy=lax)
    assert not result.ok and not result.key_only
    assert result.reasons == ("no active trust anchor matches pkg:npm/lodash@4.17.21",)
    code, out = verify_cli(home, proof)
    assert code == 1 and out["keyOnly"] is False
    # A v0.1 statement the anchor covers verifies: v0.1 is parsed, not refused.
    good = km.sign(statement("pkg:pypi/requests@2", statement_type=v01), "pypi-key")
    assert km.verify(good, policy=lax).ok
    assert verify_cli(home, good)[0] == 0


@pytest.mark.parametrize(
    ("payload_type", "payload", "reason"),
    [
        (
            PAYLOAD_TYPE,
            statement("pkg:npm/a@1", statement_type="https://in-toto.io/Statement/v9"),
            "is not a valid in-toto statement: statement _type is",
        ),
        (PAYLOAD_TYPE, b"not json at all", "is not a valid in-toto statement"),
        (
            PAYLOAD_TYPE,
            b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"pkg:npm/a@1"}],'
            b'"predicateType":"evidence.stella/v1"}',
            "subject[0].digest must be a non-empty object",
        ),
        # Respelling the media type does not dodge parsing.
        ("Application/VND.in-toto+JSON; charset=utf-8", b"{}", "not a valid in-toto"),
        # A statement under another payloadType is not "a payload that names no artifact".
        ("application/octet-stream", statement("pkg:npm/a@1"), "its payloadType is"),
        # ... even when the JSON escapes the URI, so no byte search finds it.
        (
            "text/plain",
            statement("pkg:npm/a@1").replace(b"https://", rb"\u0068ttps:\/\/"),
            "its payloadType is",
        ),
        ("application/json", statement("pkg:npm/a@1", statement_type="x"), None),
    ],
)
def test_unparsed_in_toto_never_falls_back_to_key_only(
    km: KeyManager, home: Path, payload_type: str, payload: bytes, reason: str | None
) -> None:
    # The hostile signer holds an anchor key and signs by hand: our own sign refuses these
    # payloads (test_sign_refuses_what_verification_always_refuses).
    thief = get_algorithm("ed25519").generate()
    km.import_key("k", thief.public_key().to_pem())
    at(km, T0)
    km.create_anchor("pkg:pypi/*", ["k"], [EVIDENCE])
    at(km, SIGNED)
    proof = sign_envelope(payload_type, payload, [thief], ["k"]).to_json()
    envelope = _file(home, proof)
    result = km.verify(proof, policy=VerificationPolicy(require_anchor=False))
    if reason is None:
        # "_type": "x" is no statement: an opaque JSON payload, key-only, and it says so.
        assert result.ok and result.key_only
        assert any(n.startswith("key-only check: the payload") for n in result.notes)
        assert envelope_cli(home, envelope)[1]["keyOnly"] is True
        return
    assert not result.ok and not result.key_only
    assert any(reason in r for r in result.reasons), result.reasons
    code, out = envelope_cli(home, envelope)
    assert code == 1 and any(reason in r for r in out["reasons"])


@pytest.mark.parametrize(
    ("payload_type", "payload", "refusal"),
    [
        (PAYLOAD_TYPE, b"not json at all", "needs an in-toto Statement"),
        (PAYLOAD_TYPE, b"test\n", "needs an in-toto Statement"),
        ("Application/VND.in-toto+JSON; charset=utf-8", b"{}", "needs an in-toto Statement"),
        (
            PAYLOAD_TYPE,
            statement("pkg:npm/a@1", statement_type="https://in-toto.io/Statement/v9"),
            "statement _type is",
        ),
        ("application/octet-stream", statement("pkg:npm/a@1"), "sign it as " + PAYLOAD_TYPE),
        (
            "text/plain",
            statement("pkg:npm/a@1").replace(b"https://", rb"\u0068ttps:\/\/"),
            "sign it as " + PAYLOAD_TYPE,
        ),
    ],
)
def test_sign_refuses_what_verification_always_refuses(
    km: KeyManager, home: Path, payload_type: str, payload: bytes, refusal: str
) -> None:
    """A proof that can never verify here is refused where the mistake is cheapest: before a
    key signs, with nothing stored and nothing audited (a laxer peer could accept it)."""
    setup_keys(km, "k")
    at(km, SIGNED)
    before = km.audit_events()
    with pytest.raises(UnverifiablePayloadError, match=re.escape(refusal)):
        km.sign(payload, "k", payload_type)
    assert km.audit_events() == before
    code, out = cli(
        home, "sign", "--key-id", "k", "--payload-type", payload_type,
        "--input", str(_file(home, payload)),
    )  # fmt: skip
    assert code != 0 and "refusing to sign" in str(out) and refusal in str(out), out
    with contextlib.closing(sqlite3.connect(home / DB_FILENAME)) as db:
        assert db.execute("SELECT count(*) FROM proofs").fetchone() == (0,)


def test_plain_bytes_get_a_key_only_check_that_says_so(km: KeyManager, home: Path) -> None:
    # The runbook's `echo test | stella sign | stella verify`.
    setup_keys(km, "k")
    at(km, SIGNED)
    code, digest = cli(home, "sign", "--key-id", "k", "--input", str(_file(home, b"test\n")))
    assert code == 0
    code, out = verify_cli(home, str(digest).strip())
    assert code == 0 and out["keyOnly"] is True and out["subjects"] == []
    code, out = verify_cli(home, str(digest).strip(), "--require-anchor")
    assert code == 1 and out["reasons"][0].startswith("no artifact PURL")


def _file(home: Path, data: bytes) -> Path:
    path = home.parent / "payload.bin"
    path.write_bytes(data)
    return path


# --- #5: a compromise in any anchor is a compromise everywhere ----------------------------------


@pytest.fixture
def two_anchors(km: KeyManager) -> dict[str, Any]:
    """'shared' is in anchor A (npm) and anchor B (pypi); a pypi proof signed before the
    compromise that is recorded in A only."""
    setup_keys(km, "shared")
    at(km, T0)
    a = km.create_anchor("pkg:npm/*", ["shared"], [EVIDENCE])
    b = km.create_anchor("pkg:pypi/*", ["shared"], [EVIDENCE])
    at(km, SIGNED)
    proof = km.sign(statement("pkg:pypi/requests@2"), "shared")
    return {"a": a.anchor_id, "b": b.anchor_id, "proof": proof}


COMPROMISED_AT = SIGNED + timedelta(days=10)
BEFORE_COMPROMISE = "2024-02-20T00:00:00Z"


@pytest.mark.parametrize("reason", ["compromise", "Compromised", "key-compromise"])
def test_compromise_in_one_anchor_applies_in_another(
    km: KeyManager, home: Path, two_anchors: dict[str, Any], reason: str
) -> None:
    # Some spellings are refused by the closed vocabulary of reasons (another change); a store
    # written before it may hold them, so verification must recognise them all.
    with km.store.transaction() as tx:
        anchor = tx.get_anchor(two_anchors["a"])
        assert anchor is not None
        entry = anchor.entry("shared")
        assert entry is not None
        tx.update_history(entry.revoke(COMPROMISED_AT, reason))
    proof = two_anchors["proof"]
    # Asserted time before the compromise: the thief can back-date, so only trusted time helps.
    before = km.verify(proof, at=COMPROMISED_AT - timedelta(days=1))
    assert not before.ok
    assert before.anchor_id == two_anchors["b"]
    assert any("revoked for compromise" in r for r in before.reasons), before.reasons
    after = km.verify(proof, at=COMPROMISED_AT + timedelta(days=1))
    assert not after.ok
    code, out = verify_cli(home, proof, when=BEFORE_COMPROMISE)
    assert code == 1 and any("revoked for compromise" in r for r in out["reasons"])


def test_compromise_follows_the_public_key_not_the_key_id(km: KeyManager) -> None:
    setup_keys(km, "k1")
    at(km, T0)
    km.import_key("k1-copy", km.get_key("k1").public_key_pem)
    a = km.create_anchor("pkg:npm/*", ["k1"], [EVIDENCE])
    km.create_anchor("pkg:pypi/*", ["k1-copy"], [EVIDENCE])
    at(km, SIGNED)
    proof = km.sign(statement("pkg:pypi/requests@2"), "k1")
    plain = km.sign(b"bytes", "k1", "application/octet-stream")
    lax = VerificationPolicy(require_anchor=False)
    assert km.verify(proof, at=SIGNED).ok and km.verify(plain, at=SIGNED, policy=lax).ok
    km.revoke_key(a.anchor_id, "k1", "compromise", COMPROMISED_AT)
    result = km.verify(proof, at=SIGNED)
    assert not result.ok and any("revoked for compromise" in r for r in result.reasons)
    # The key-only path too (a payload naming no artifact).
    assert not km.verify(plain, at=SIGNED, policy=lax).ok


def test_compromise_is_key_wide_in_the_key_only_path(
    km: KeyManager, home: Path, two_anchors: dict[str, Any]
) -> None:
    proof = km.sign(b"plain", "shared", "application/octet-stream")
    km.revoke_key(two_anchors["a"], "shared", "compromise", COMPROMISED_AT)
    result = km.verify(proof, policy=VerificationPolicy(require_anchor=False), at=SIGNED)
    assert not result.ok and result.key_only
    code, out = verify_cli(home, proof, when=BEFORE_COMPROMISE)
    assert code == 1 and out["keyOnly"] is True


def test_compromise_is_key_wide_in_forensics_batch_and_feed(
    km: KeyManager, home: Path, two_anchors: dict[str, Any]
) -> None:
    from stellakeys.batch import BatchItem, verify_many
    from stellakeys.feed import FeedConfig, manager_from_feed, publish_feed
    from stellakeys.forensics import proofs_signed_by

    proof = two_anchors["proof"]
    setup_keys(km, "feed-key")
    km.revoke_key(two_anchors["a"], "shared", "compromise", COMPROMISED_AT)

    findings = proofs_signed_by(km, "shared")
    (found,) = [p for p in findings if p.digest == proof]
    assert not found.still_valid
    assert any("revoked for compromise" in r for r in found.result.reasons)

    (outcome,) = verify_many([BatchItem(proof, at=SIGNED)], manager=km)
    assert not outcome.ok and outcome.category == "compromised key without trusted time"

    # Valid for centuries: the CLI below checks expiry against the machine's clock.
    config = FeedConfig(("feed-key",), expires_in=timedelta(days=365 * 300))
    feed = publish_feed(km, config, include_keys=True)
    offline = manager_from_feed(feed.document, clock=FrozenClock(COMPROMISED_AT))
    result = offline.verify(km.get_proof(proof), at=SIGNED)
    assert not result.ok and result.anchor_id == two_anchors["b"]
    # And through the CLI's --feed (the consumer side), offline from the feed alone.
    feed_file = home.parent / "feed.json"
    feed_file.write_bytes(feed.feed.envelope.to_json())
    envelope_file = home.parent / "proof.json"
    envelope_file.write_bytes(km.get_proof(proof).to_json())
    code, out = cli(
        home,
        "verify",
        "--envelope",
        str(envelope_file),
        "--feed",
        str(feed_file),
        "--at-time",
        BEFORE_COMPROMISE,
        "--json",
    )
    assert code == 1 and isinstance(out, dict), out
    assert any("revoked for compromise" in r for r in out["reasons"])


def test_anchor_status_counts_key_wide_compromise(
    km: KeyManager, two_anchors: dict[str, Any]
) -> None:
    km.revoke_key(two_anchors["a"], "shared", "compromise", COMPROMISED_AT)
    status = km.anchor_status(two_anchors["b"])
    assert status.proofs_total == 1 and status.pending_rescans == 1


# --- #9/#11: the policy validates itself; one threshold check -------------------------------


@pytest.mark.parametrize("threshold", [0, -1, True, 1.0, "1", None])
def test_policy_refuses_a_threshold_below_one(threshold: object) -> None:
    with pytest.raises(PolicyError, match="threshold must be an integer >= 1"):
        VerificationPolicy(threshold=threshold)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        attrs.evolve(VerificationPolicy(), threshold=threshold)


def test_policy_flags_must_be_booleans() -> None:
    with pytest.raises(PolicyError):
        VerificationPolicy(require_anchor="no")  # type: ignore[arg-type]


def test_threshold_zero_with_a_token_over_garbage_never_verifies(
    km: KeyManager, openssl: Any, tmp_path: Path
) -> None:
    from tsa_support import TestTsa

    from stellakeys.timestamp import RFC3161Verifier

    (tmp_path / "tsa").mkdir()
    tsa = TestTsa(tmp_path / "tsa", openssl)
    setup_keys(km, "k")
    # Keys a day old at the TSA's (real) time: openssl ts stamps with the machine's clock.
    real_now = datetime.now(UTC)
    at(km, real_now - timedelta(days=1))
    km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    envelope = km.get_proof(km.sign(statement("pkg:npm/a@1"), "k"))
    garbage = attrs.evolve(envelope.signatures[0], sig=b"\x00" * 64)
    forged = attrs.evolve(envelope, signatures=(garbage, attrs.evolve(garbage, sig=b"\x01" * 64)))
    token = tsa.reply(garbage.sig)
    verifier = RFC3161Verifier.from_pem_files([tsa.root_pem])
    # On 9603a3d this policy existed, and the result was ok with no verified key.
    with pytest.raises(PolicyError):
        VerificationPolicy(threshold=0)
    # A policy forged past its validator still meets the one threshold check.
    sneaky = VerificationPolicy()
    object.__setattr__(sneaky, "threshold", 0)
    with pytest.raises(PolicyError):
        km.verify(forged, policy=sneaky, timestamps=[token], timestamp_verifier=verifier)
    honest = km.verify(forged, timestamps=[token], timestamp_verifier=verifier)
    assert not honest.ok and honest.verified_keys == ()


# --- the pure rules ---------------------------------------------------------------------------


def test_evaluate_applies_compromise_spellings_and_key_wide_times(km: KeyManager) -> None:
    from stellakeys.verification import (
        SigningTime,
        TimeSource,
        evaluate,
        key_wide_compromises,
    )

    setup_keys(km, "k")
    at(km, T0)
    anchor = km.create_anchor("pkg:npm/*", ["k"], [EVIDENCE])
    at(km, SIGNED)
    envelope = km.get_proof(km.sign(statement("pkg:npm/a@1"), "k"))
    entry = anchor.key_history[0]

    def judge(a: Any, compromises: Any = None) -> bool:
        return evaluate(
            envelope,
            digest=None,
            time=SigningTime(SIGNED, TimeSource.ASSERTED),
            policy=VerificationPolicy(),
            anchor=a,
            purl="pkg:npm/a@1",
            predicate_type=EVIDENCE,
            compromises=compromises,
        ).ok

    assert judge(anchor)
    # This anchor's own record, in a spelling other than "compromise", scheduled later.
    own = attrs.evolve(anchor, key_history=(entry.revoke(COMPROMISED_AT, "KeyCompromise"),))
    assert not judge(own)
    # Another anchor's record: the earliest compromise of the fingerprint wins.
    elsewhere = [
        entry.revoke(COMPROMISED_AT, "compromised"),
        entry.revoke(SIGNED - timedelta(days=1), "superseded"),
        entry.revoke(SIGNED + timedelta(days=1), "key-compromise"),
    ]
    found = key_wide_compromises(elsewhere)
    assert found == {entry.fingerprint: SIGNED + timedelta(days=1)}
    assert not judge(anchor, found)
    assert judge(anchor, {"SHA256:" + "00" * 32: T0})  # another key's compromise


# --- the facts of one envelope are that envelope's (binding.payload_facts keeps the last) ----


def test_payload_facts_are_never_those_of_another_envelope() -> None:
    """``payload_facts`` keeps its last answer for the very Envelope object it read; an equal
    or different envelope, or the last one read again after another, gets its own facts,
    also with threads interleaving (the memo is one tuple, replaced whole)."""
    import threading

    from stellakeys.binding import payload_facts
    from stellakeys.dsse import Envelope

    def env(purl: str) -> Envelope:
        return Envelope(PAYLOAD_TYPE, statement(purl))

    a, c = env("pkg:npm/a@1"), env("pkg:npm/evil@6")
    assert payload_facts(a).subjects == ("pkg:npm/a@1",)
    assert payload_facts(a) is payload_facts(a)
    assert payload_facts(c).subjects == ("pkg:npm/evil@6",)
    assert payload_facts(a).subjects == ("pkg:npm/a@1",)
    other_type = Envelope("text/plain", a.payload)  # same payload bytes, another type
    assert payload_facts(other_type).error is not None and payload_facts(a).error is None

    wrong: list[str] = []

    def judge(name: str) -> None:
        mine = [env(f"pkg:npm/{name}-{i}@1") for i in range(200)]
        for _ in range(20):
            for i, e in enumerate(mine):
                if payload_facts(e).subjects != (f"pkg:npm/{name}-{i}@1",):
                    wrong.append(name)

    threads = [threading.Thread(target=judge, args=(n,)) for n in ("x", "y", "z")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []

"""Sigstore bundles v0.3, both ways: what we write parses with the Sigstore protobuf models
and verifies here; what any producer writes is verified with our anchors, policy and trusted
time (its key hint and its timestamps prove nothing by themselves)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sigstore_protobuf_specs.dev.sigstore.bundle.v1 import Bundle
from tsa_support import TestTsa, manager_trusting

from stellakeys import ALL_ANCHORS, FrozenClock, KeyManager, Statement, Subject, TimeSource
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.errors import MalformedEnvelopeError
from stellakeys.sigstore_bundle import (
    BUNDLE_MEDIA_TYPE,
    MalformedBundleError,
    read_bundle,
    to_bundle,
    verify_bundle,
)
from stellakeys.timestamp import parse_token
from stellakeys_cli.main import cli

EVIDENCE = "evidence.stella/v1"
INTOTO = "application/vnd.in-toto+json"
PURL = "pkg:npm/app@1.0.0"


@pytest.fixture(scope="module")
def tsa(openssl, tmp_path_factory: pytest.TempPathFactory) -> TestTsa:  # type: ignore[no-untyped-def]
    return TestTsa(tmp_path_factory.mktemp("tsa"), openssl)


@pytest.fixture
def km(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tsa: TestTsa) -> Iterator[KeyManager]:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "bundle-test-passphrase")
    manager = manager_trusting(tsa, tmp_path / "home")
    yield manager
    manager.close()


def statement() -> bytes:
    return Statement((Subject(PURL, {"sha256": "ab" * 32}),), EVIDENCE, {"k": "v"}).to_json()


def stored_proof(km: KeyManager, tsa: TestTsa) -> tuple[str, Envelope]:
    km.generate_key("signer")
    km.create_anchor("pkg:npm/*", ["signer"], [EVIDENCE])
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    clock.set(datetime.now(UTC))
    digest = km.sign(statement(), "signer", INTOTO)
    envelope = km.get_proof(digest)
    km.timestamp_proof(digest, tokens=[tsa.reply(envelope.signatures[0].sig, token_only=True)])
    return digest, envelope


def test_bundle_we_write_parses_with_the_sigstore_models(km: KeyManager, tsa: TestTsa) -> None:
    from stellakeys.sigstore_bundle import export_bundle

    digest, envelope = stored_proof(km, tsa)
    written = export_bundle(km, digest)
    model = Bundle.from_dict(json.loads(json.dumps(written)))
    assert model.media_type == BUNDLE_MEDIA_TYPE
    assert model.verification_material.public_key.hint == "signer"
    assert model.dsse_envelope.payload == envelope.payload
    assert model.dsse_envelope.payload_type == INTOTO
    assert model.dsse_envelope.signatures[0].sig == envelope.signatures[0].sig
    (stamp,) = model.verification_material.timestamp_verification_data.rfc3161_timestamps
    # A TimeStampResp (what the bundle schema asks for) around the stored token, unchanged.
    (stored,) = km.proof_timestamps(digest)
    assert stamp.signed_timestamp.endswith(stored)
    assert parse_token(stamp.signed_timestamp).der == parse_token(stored).der
    assert parse_token(stamp.signed_timestamp).covers(envelope.signatures[0].sig)

    # And back: the bundle verifies with trusted time from its timestamp.
    result = verify_bundle(km, json.dumps(written))
    assert result.ok, result.reasons
    assert result.time_source is TimeSource.TRUSTED


def test_bundle_timestamps_are_trusted_time_that_survives_a_later_compromise(
    km: KeyManager, tsa: TestTsa
) -> None:
    digest, envelope = stored_proof(km, tsa)
    bundle = json.dumps(to_bundle(envelope, km.proof_timestamps(digest)))
    clock = km.clock
    assert isinstance(clock, FrozenClock)
    clock.set(datetime.now(UTC) + timedelta(hours=2))
    km.revoke_key(ALL_ANCHORS, "signer", "compromise", datetime.now(UTC) + timedelta(hours=1))
    # Without the bundle's timestamp the signature has no trusted time: refused.
    assert not km.verify(envelope).ok
    # With it, the TSA vouches it was made before the compromise.
    result = verify_bundle(km, bundle)
    assert result.ok, result.reasons
    assert result.time_source is TimeSource.TRUSTED


def test_hint_selects_nothing_and_anchors_still_apply(km: KeyManager, tsa: TestTsa) -> None:
    stored_proof(km, tsa)
    from stellakeys.crypto import get_algorithm

    # An outsider's envelope with our key's id as hint and keyid, and a real TSA timestamp.
    outsider = get_algorithm("ed25519").generate()
    forged = sign_envelope(INTOTO, statement(), [outsider], ["signer"])
    stamp = tsa.reply(forged.signatures[0].sig)
    bundle = to_bundle(forged, [stamp], key_hint="signer")
    result = verify_bundle(km, json.dumps(bundle))
    assert not result.ok
    # A statement about an artifact no anchor covers, signed by our key, does not verify
    # either: the bundle brings no policy of its own.
    other = Statement((Subject("pkg:pypi/x@1", {"sha256": "cd" * 32}),), EVIDENCE).to_json()
    other_digest = km.sign(other, "signer", INTOTO)
    result = verify_bundle(km, json.dumps(to_bundle(km.get_proof(other_digest))))
    assert not result.ok


def test_rogue_tsa_timestamp_in_a_bundle_gives_no_trusted_time(
    km: KeyManager, tsa: TestTsa
) -> None:
    _, envelope = stored_proof(km, tsa)
    rogue = tsa.reply(envelope.signatures[0].sig, signer="rogue")
    result = verify_bundle(km, json.dumps(to_bundle(envelope, [rogue])))
    assert result.time_source is not TimeSource.TRUSTED
    assert any("timestamp" in n for n in (*result.notes, *result.reasons))


def _bundle(**changes: Any) -> dict[str, Any]:
    key = __import__("stellakeys").get_algorithm("ed25519").generate()
    obj = to_bundle(sign_envelope(INTOTO, statement(), [key]))
    obj.update(changes)
    return obj


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps(_bundle(mediaType="application/json")).encode(), "unsupported"),
        (json.dumps({"mediaType": BUNDLE_MEDIA_TYPE, "messageSignature": {}}).encode(), "no dsse"),
        (
            json.dumps(
                _bundle(
                    verificationMaterial={
                        "timestampVerificationData": {"rfc3161Timestamps": [{"x": 1}]}
                    }
                )
            ).encode(),
            "signedTimestamp",
        ),
    ],
)
def test_malformed_bundles_are_refused(bundle: bytes, message: str) -> None:
    with pytest.raises(MalformedBundleError, match=message):
        read_bundle(bundle)


def _twice(bundle: dict[str, Any], field: str, other: str) -> dict[str, Any]:
    """``bundle`` with ``field`` also given under ``other``, holding another envelope."""
    key = __import__("stellakeys").get_algorithm("ed25519").generate()
    decoy = to_bundle(sign_envelope("text/plain", b"decoy", [key]))["dsseEnvelope"]
    return {**bundle, other: decoy if field == "dsseEnvelope" else bundle[field]}


def _parser_differentials() -> list[tuple[dict[str, Any], str]]:
    """Bundles two readers can read differently: one field under its JSON name and its proto
    name, or two members of one protobuf oneof."""
    plain = _bundle()
    material = plain["verificationMaterial"]
    return [
        (_twice(plain, "dsseEnvelope", "dsse_envelope"), "twice"),
        (_twice(plain, "mediaType", "media_type"), "twice"),
        (
            {**plain, "dsseEnvelope": {**plain["dsseEnvelope"], "payload_type": "text/plain"}},
            "twice",
        ),
        ({**plain, "verification_material": material}, "twice"),
        ({**plain, "messageSignature": {"signature": "AA=="}}, "holds both"),
        (
            {**plain, "verificationMaterial": {**material, "certificate": {"rawBytes": "AA=="}}},
            "holds both",
        ),
        (
            {
                **plain,
                "verificationMaterial": {
                    **material,
                    "timestampVerificationData": {"rfc3161Timestamps": []},
                    "timestamp_verification_data": {"rfc3161Timestamps": []},
                },
            },
            "twice",
        ),
    ]


@pytest.mark.parametrize("case", range(7))
def test_a_bundle_that_reads_two_ways_is_refused(case: int) -> None:
    """A hostile producer gives one field under both of its names (``dsseEnvelope`` and
    ``dsse_envelope``, another envelope in each) or two members of a oneof: which one a
    verifier reads depends on its parser, so we read neither."""
    bundle, message = _parser_differentials()[case]
    with pytest.raises(MalformedBundleError, match=message):
        read_bundle(json.dumps(bundle))


def test_the_sigstore_models_read_the_other_envelope() -> None:
    """Why: the independent reader (sigstore-protobuf-specs' models, as sigstore-python uses
    them) accepts the two-name bundle and reads the proto name's envelope, the decoy, where
    our reader took the JSON name's until it refused both."""
    bundle, _ = _parser_differentials()[0]
    model = Bundle.from_dict(bundle)
    assert model.dsse_envelope.payload_type == "text/plain"  # the decoy
    assert bundle["dsseEnvelope"]["payloadType"] == INTOTO
    assert Bundle.from_dict(_bundle()).dsse_envelope.payload_type == INTOTO


def test_duplicate_members_in_a_bundle_are_refused() -> None:
    text = json.dumps(_bundle())
    dup = text[:-1] + ', "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'
    with pytest.raises(MalformedEnvelopeError):
        read_bundle(dup)


def test_multi_signature_proofs_are_not_bundled() -> None:
    from stellakeys.crypto import get_algorithm

    keys = [get_algorithm("ed25519").generate() for _ in range(2)]
    with pytest.raises(MalformedBundleError, match="exactly one signature; this proof has 2"):
        to_bundle(sign_envelope(INTOTO, statement(), keys))


def test_cli_proof_export_and_verify_bundle(tmp_path: Path, tsa: TestTsa) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "bundle-cli-passphrase",
        "STELLAKEYS_ACTOR": "ops@example.com",
    }
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    run("key", "generate", "--profile", "default", "--key-id", "cli-key")
    run("anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", "cli-key",
        "--predicate-types", EVIDENCE)  # fmt: skip
    payload = tmp_path / "statement.json"
    payload.write_bytes(statement())
    digest = run("sign", "--key-id", "cli-key", "--input", str(payload)).stdout.strip()
    sig_env = Envelope.from_json(run("proof", "export", "--proof-bundle", digest,
                                     "--format", "dsse").stdout)  # fmt: skip
    token = tmp_path / "token.tsr"
    token.write_bytes(tsa.reply(sig_env.signatures[0].sig))
    run("timestamp", "add", "--proof-bundle", digest, "--token", str(token),
        "--tsa-root", str(tsa.root_pem))  # fmt: skip
    out = tmp_path / "proof.sigstore.json"
    run("proof", "export", "--proof-bundle", digest, "--format", "sigstore-bundle",
        "--output", str(out))  # fmt: skip
    written = json.loads(out.read_text())
    assert written["mediaType"] == BUNDLE_MEDIA_TYPE
    assert written["verificationMaterial"]["publicKey"]["hint"] == "cli-key"
    assert (
        len(written["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]) == 1
    )
    assert (
        Bundle.from_dict(json.loads(out.read_text())).dsse_envelope.signatures[0].keyid == "cli-key"
    )

    verified = json.loads(run("verify", "--bundle", str(out), "--tsa-root", str(tsa.root_pem),
                              "--require-trusted-time", "--json").stdout)  # fmt: skip
    assert verified["ok"] and verified["keyId"] == "cli-key"

    # Tampered payload in the bundle: refused, exit 1.
    written["dsseEnvelope"]["payload"] = base64.b64encode(b"{}").decode()
    out.write_text(json.dumps(written))
    failed = run("verify", "--bundle", str(out), "--json", ok=False)
    assert failed.exit_code == 1

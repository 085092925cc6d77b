"""Every envelope stellakeys signs carries a keyid (docs/decisions/0022), so verifiers that
match signatures to keys by keyid accept them with no extra option on our side.

Peers: securesystemslib's ``Envelope.verify`` and in-toto's own ``in_toto.models.metadata.
Envelope.verify_signature`` (the check ``in-toto-verify`` applies to DSSE metadata), each given
the signer's public key under the keyid the envelope names.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from stellakeys.crypto import PublicKey, get_algorithm
from stellakeys.dsse import Envelope, sign_envelope, verify_envelope
from stellakeys_cli.main import cli

TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"pkg:npm/a@1"}]}'
SCHEMES = {"ed25519": "ed25519", "ecdsa-p256-sha256": "ecdsa-sha2-nistp256"}


def sslib_key(public: PublicKey, keyid: str, scheme: str) -> SSlibKey:
    crypto_key = serialization.load_pem_public_key(public.to_pem().encode())
    return SSlibKey.from_crypto(crypto_key, keyid=keyid, scheme=scheme)


@pytest.mark.parametrize("alg_id", sorted(SCHEMES))
def test_library_envelope_without_keyids_carries_the_fingerprint(alg_id: str) -> None:
    key = get_algorithm(alg_id).generate()
    other = get_algorithm(alg_id).generate()
    envelope = sign_envelope(TYPE, PAYLOAD, [key, other])
    assert [s.keyid for s in envelope.signatures] == [key.fingerprint, other.fingerprint]
    assert json.loads(envelope.to_json())["signatures"][0]["keyid"] == key.fingerprint

    verifier = sslib_key(key.public_key(), key.fingerprint, SCHEMES[alg_id])
    sslib_env = SslibEnvelope.from_dict(json.loads(envelope.to_json()))
    assert list(sslib_env.verify([verifier], 1)) == [key.fingerprint]

    # A hostile signer writing a trusted key's fingerprint as its keyid gains nothing, on
    # either side: the hint selects a key, the signature must still verify with it.
    impostor = get_algorithm(alg_id).generate()
    forged = sign_envelope(TYPE, PAYLOAD, [impostor], keyids=[key.fingerprint])
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(json.loads(forged.to_json())).verify([verifier], 1)
    assert not verify_envelope(forged, {key.fingerprint: key.public_key()}).ok


def test_explicit_none_keyid_still_gets_the_fingerprint() -> None:
    key = get_algorithm("ed25519").generate()
    envelope = sign_envelope(TYPE, PAYLOAD, [key, key], keyids=[None, "named"])
    assert [s.keyid for s in envelope.signatures] == [key.fingerprint, "named"]


def test_verification_does_not_depend_on_the_default_keyid() -> None:
    key = get_algorithm("ed25519").generate()
    envelope = sign_envelope(TYPE, PAYLOAD, [key])
    stripped = Envelope(
        envelope.payload_type,
        envelope.payload,
        tuple(type(s)(s.sig, None) for s in envelope.signatures),
    )
    assert verify_envelope(stripped, [key.public_key()]).ok
    assert verify_envelope(envelope, {"any-name": key.public_key()}).ok


def test_cli_envelope_verifies_in_securesystemslib(tmp_path: Path) -> None:
    alg_id = "ed25519"  # the default profile's algorithm
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "interop-passphrase",
        "STELLAKEYS_ACTOR": "ops@example.com",
    }
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    run("key", "generate", "--profile", "default", "--key-id", "build-key", "--algorithm", alg_id)
    listed = json.loads(run("key", "list", "--json"))
    assert [k["keyId"] for k in listed] == ["build-key"]
    artifact = tmp_path / "artifact.txt"
    artifact.write_text("hello")
    out = tmp_path / "envelope.json"
    run(
        "sign",
        "--key-id",
        "build-key",
        "--input",
        str(artifact),
        "--subject",
        "pkg:npm/left-pad@1.3.0",
        "--predicate-type",
        "evidence.stella/v1",
        "--output",
        str(out),
    )
    envelope = json.loads(out.read_text())
    assert envelope["signatures"][0]["keyid"] == "build-key"
    from stellakeys.crypto import load_public_key_pem

    public = load_public_key_pem(listed[0]["publicKey"])
    verifier = sslib_key(public, "build-key", SCHEMES[alg_id])
    assert list(SslibEnvelope.from_dict(envelope).verify([verifier], 1)) == ["build-key"]
    assert_in_toto_accepts(json.loads(out.read_text()), public, "build-key", SCHEMES[alg_id])


def assert_in_toto_accepts(
    envelope: dict[str, object], public: PublicKey, keyid: str, scheme: str
) -> None:
    """in-toto's verifier finds the key by the envelope's keyid and checks the signature; a
    changed payload is refused."""
    from in_toto.models.metadata import Envelope as InTotoEnvelope
    from in_toto.models.metadata import SignatureVerificationError

    key = {"keyid": keyid, **sslib_key(public, keyid, scheme).to_dict()}
    # from_dict consumes the dicts it is given (securesystemslib pops their members): copies.
    InTotoEnvelope.from_dict(copy.deepcopy(envelope)).verify_signature(copy.deepcopy(key))
    tampered = {**copy.deepcopy(envelope), "payload": base64.b64encode(b'{"_type":"x"}').decode()}
    with pytest.raises(SignatureVerificationError):
        InTotoEnvelope.from_dict(tampered).verify_signature(copy.deepcopy(key))


@pytest.mark.parametrize("alg_id", sorted(SCHEMES))
def test_library_envelope_verifies_in_in_toto(alg_id: str) -> None:
    key = get_algorithm(alg_id).generate()
    envelope = json.loads(sign_envelope(TYPE, PAYLOAD, [key]).to_json())
    assert_in_toto_accepts(envelope, key.public_key(), key.fingerprint, SCHEMES[alg_id])

"""securesystemslib (1.x) DSSE envelopes <-> stellakeys, both ways, Ed25519 and ECDSA P-256.

securesystemslib's ``Envelope.verify`` only tries keys whose keyid equals the signature's
keyid (its issue #416), so envelopes stellakeys makes for it carry the securesystemslib keyid.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from stellakeys.crypto import PrivateKey, PublicKey, get_algorithm, load_public_key_pem
from stellakeys.dsse import Envelope, pae, sign_envelope, verify_envelope

TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"pkg:npm/a@1"}]}'
ALGS = ["ed25519", "ecdsa-p256-sha256"]


def sslib_signer(alg_id: str) -> CryptoSigner:
    if alg_id == "ed25519":
        return CryptoSigner.generate_ed25519()
    return CryptoSigner.generate_ecdsa(scheme="ecdsa-sha2-nistp256")


def to_stellakeys(key: SSlibKey) -> PublicKey:
    """A securesystemslib public key as stellakeys sees it (raw hex for Ed25519, else PEM)."""
    if key.keytype == "ed25519":
        raw = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
        pem = raw.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return load_public_key_pem(pem)
    return load_public_key_pem(key.keyval["public"])


def to_sslib(key: PublicKey, scheme: str) -> SSlibKey:
    crypto_key = serialization.load_pem_public_key(key.to_pem().encode())
    return SSlibKey.from_crypto(crypto_key, scheme=scheme)


SCHEMES = {"ed25519": "ed25519", "ecdsa-p256-sha256": "ecdsa-sha2-nistp256"}


def test_pae_is_the_same_on_both_sides() -> None:
    for payload_type, payload in [
        (TYPE, PAYLOAD),
        ("application/vnd.exämple+json", "ü".encode()),
        ("", b""),
    ]:
        assert SslibEnvelope(payload, payload_type, {}).pae() == pae(payload_type, payload)


# --- securesystemslib -> stellakeys --------------------------------------------------------


@pytest.mark.parametrize("alg_id", ALGS)
def test_sslib_envelope_verifies_in_stellakeys(alg_id: str) -> None:
    signer = sslib_signer(alg_id)
    sslib_env = SslibEnvelope(PAYLOAD, TYPE, {})
    sslib_env.sign(signer)
    blob = json.dumps(sslib_env.to_dict())

    public = to_stellakeys(signer.public_key)
    assert public.algorithm.id == alg_id
    envelope = Envelope.from_json(blob)
    assert envelope.payload == PAYLOAD
    assert envelope.payload_type == TYPE
    assert envelope.signatures[0].keyid == signer.public_key.keyid

    # With the keyid hint, and as bare keys (the hint then names nothing).
    by_keyid = verify_envelope(envelope, {signer.public_key.keyid: public})
    assert by_keyid.ok
    assert by_keyid.verified[0].key_id == signer.public_key.keyid
    assert verify_envelope(envelope, [public]).ok

    # A securesystemslib envelope with its payload swapped does not verify.
    forged = json.loads(blob)
    forged["payload"] = "e30="  # "{}"
    result = verify_envelope(Envelope.from_json(json.dumps(forged)), [public])
    assert not result.ok
    assert result.failures[0].reason


def test_sslib_two_signers_meet_stellakeys_threshold_two() -> None:
    signers = [sslib_signer("ed25519"), sslib_signer("ecdsa-p256-sha256")]
    sslib_env = SslibEnvelope(PAYLOAD, TYPE, {})
    for signer in signers:
        sslib_env.sign(signer)
    envelope = Envelope.from_json(json.dumps(sslib_env.to_dict()))
    keys = [to_stellakeys(s.public_key) for s in signers]
    result = verify_envelope(envelope, keys, threshold=2)
    assert result.ok
    assert {v.algorithm for v in result.verified} == {"ed25519", "ecdsa-p256-sha256"}


# --- stellakeys -> securesystemslib --------------------------------------------------------


@pytest.mark.parametrize("alg_id", ALGS)
def test_stellakeys_envelope_verifies_in_sslib(alg_id: str) -> None:
    key: PrivateKey = get_algorithm(alg_id).generate()
    sslib_key = to_sslib(key.public_key(), SCHEMES[alg_id])
    envelope = sign_envelope(TYPE, PAYLOAD, [key], keyids=[sslib_key.keyid])

    sslib_env = SslibEnvelope.from_dict(json.loads(envelope.to_json()))
    assert sslib_env.payload == PAYLOAD
    assert sslib_env.payload_type == TYPE
    accepted = sslib_env.verify([sslib_key], 1)
    assert list(accepted) == [sslib_key.keyid]

    # securesystemslib refuses the same envelope with another payload type.
    tampered = json.loads(envelope.to_json())
    tampered["payloadType"] = "application/json"
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(tampered).verify([sslib_key], 1)
    # ... and one signed by a different stellakeys key under the same keyid.
    impostor = get_algorithm(alg_id).generate()
    forged = sign_envelope(TYPE, PAYLOAD, [impostor], keyids=[sslib_key.keyid])
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(json.loads(forged.to_json())).verify([sslib_key], 1)


def test_stellakeys_multi_signature_envelope_meets_sslib_threshold_two() -> None:
    keys = [get_algorithm(a).generate() for a in ALGS]
    sslib_keys = [to_sslib(k.public_key(), SCHEMES[a]) for k, a in zip(keys, ALGS, strict=True)]
    envelope = sign_envelope(TYPE, PAYLOAD, keys, keyids=[k.keyid for k in sslib_keys])
    accepted = SslibEnvelope.from_dict(json.loads(envelope.to_json())).verify(sslib_keys, 2)
    assert set(accepted) == {k.keyid for k in sslib_keys}


def test_sslib_ml_dsa_scheme_is_not_pure_ml_dsa_over_pae() -> None:
    """A documented non-interop: securesystemslib's "ml-dsa-65/1" scheme (TAP 21) signs
    b"tuf\\x01" + SHA-512(PAE), not the PAE itself, so its ML-DSA envelopes do not verify as
    pure FIPS 204 ML-DSA-65 over the PAE, which is what DSSE and stellakeys specify."""
    signer = CryptoSigner.generate_mldsa(scheme="ml-dsa-65/1")
    sslib_env = SslibEnvelope(PAYLOAD, TYPE, {})
    sslib_env.sign(signer)
    envelope = Envelope.from_json(json.dumps(sslib_env.to_dict()))
    public = load_public_key_pem(signer.public_key.keyval["public"])
    assert public.algorithm.id == "ml-dsa-65"
    assert not verify_envelope(envelope, [public]).ok
    # The signature is a valid pure ML-DSA-65 signature, over the TAP 21 message instead.
    tap21_message = b"tuf\x01" + hashlib.sha512(envelope.pae()).digest()
    public.verify(envelope.signatures[0].sig, tap21_message)

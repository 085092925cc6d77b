"""OpenSSL 3 command line <-> stellakeys, both ways, for Ed25519 and ECDSA P-256 / P-384.

ML-DSA is not here: the system OpenSSL is 3.0, which has no ML-DSA (3.5 added it).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stellakeys.crypto import get_algorithm, load_private_key_pem, load_public_key_pem
from stellakeys.dsse import Envelope, pae, sign_envelope, verify_envelope
from stellakeys.errors import InvalidSignatureError, MalformedKeyError

if TYPE_CHECKING:
    from conftest import OpenSSL

GENPKEY = {
    "ed25519": ["-algorithm", "ED25519"],
    "ecdsa-p256-sha256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ecdsa-p384-sha384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
}
DIGEST = {"ecdsa-p256-sha256": "-sha256", "ecdsa-p384-sha384": "-sha384"}
ALGS = sorted(GENPKEY)
MESSAGE = b"pkg:pypi/stellakeys@0.1.0\n\x00\xff binary and text"


def openssl_sign(openssl: OpenSSL, alg_id: str, key: Path, message: Path, *extra: str) -> bytes:
    if alg_id == "ed25519":
        return openssl("pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", message, *extra)
    return openssl("dgst", DIGEST[alg_id], "-sign", key, *extra, message)


def openssl_verifies(
    openssl: OpenSSL, alg_id: str, pub: Path, message: Path, signature: Path
) -> bool:
    if alg_id == "ed25519":
        args = ["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", message]
        proc = openssl.run(*args, "-sigfile", signature)
        ok = b"Signature Verified Successfully" in proc.stdout
    else:
        proc = openssl.run("dgst", DIGEST[alg_id], "-verify", pub, "-signature", signature, message)
        ok = b"Verified OK" in proc.stdout
    assert ok == (proc.returncode == 0), proc
    return ok


@pytest.fixture
def message_file(tmp_path: Path) -> Path:
    path = tmp_path / "message.bin"
    path.write_bytes(MESSAGE)
    return path


# --- OpenSSL keys and signatures into stellakeys -------------------------------------------


@pytest.mark.parametrize("alg_id", ALGS)
def test_openssl_key_and_signature_verify_in_stellakeys(
    alg_id: str, openssl: OpenSSL, tmp_path: Path, message_file: Path
) -> None:
    key_file = tmp_path / "key.pem"
    openssl("genpkey", *GENPKEY[alg_id], "-out", key_file)
    pub_pem = openssl("pkey", "-in", key_file, "-pubout")

    private = load_private_key_pem(key_file.read_bytes(), None)
    public = load_public_key_pem(pub_pem)
    assert private.algorithm.id == alg_id
    assert public.algorithm.id == alg_id
    assert private.public_key() == public
    der = openssl("pkey", "-in", key_file, "-pubout", "-outform", "DER")
    assert public.spki_der == der

    signature = openssl_sign(openssl, alg_id, key_file, message_file)
    public.verify(signature, MESSAGE)
    with pytest.raises(InvalidSignatureError):
        public.verify(signature, MESSAGE + b".")
    # And the key OpenSSL made signs in stellakeys, too.
    public.verify(private.sign(MESSAGE), MESSAGE)


@pytest.mark.parametrize("alg_id", ALGS)
def test_openssl_encrypted_key_loads_with_its_passphrase(
    alg_id: str, openssl: OpenSSL, tmp_path: Path, message_file: Path
) -> None:
    key_file = tmp_path / "key.pem"
    openssl("genpkey", *GENPKEY[alg_id], "-aes256", "-pass", "pass:s3cret pass", "-out", key_file)
    pem = key_file.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    private = load_private_key_pem(pem, b"s3cret pass")
    assert private.algorithm.id == alg_id
    for wrong in (b"s3cret pas", b"", None):
        with pytest.raises(MalformedKeyError):
            load_private_key_pem(pem, wrong)
    public = load_public_key_pem(
        openssl("pkey", "-in", key_file, "-passin", "pass:s3cret pass", "-pubout")
    )
    assert private.public_key() == public
    signature = openssl_sign(openssl, alg_id, key_file, message_file, "-passin", "pass:s3cret pass")
    public.verify(signature, MESSAGE)


@pytest.mark.parametrize(
    ("curve", "alg_id"), [("prime256v1", "ecdsa-p256-sha256"), ("secp384r1", "ecdsa-p384-sha384")]
)
def test_openssl_traditional_ec_private_key_loads(
    curve: str, alg_id: str, openssl: OpenSSL, tmp_path: Path
) -> None:
    pem = openssl("ecparam", "-name", curve, "-genkey", "-noout")
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert load_private_key_pem(pem, None).algorithm.id == alg_id


# --- stellakeys keys and signatures into OpenSSL -------------------------------------------


@pytest.mark.parametrize("alg_id", ALGS)
def test_stellakeys_signature_verifies_in_openssl(
    alg_id: str, openssl: OpenSSL, tmp_path: Path, message_file: Path
) -> None:
    key = get_algorithm(alg_id).generate()
    pub_file = tmp_path / "pub.pem"
    pub_file.write_text(key.public_key().to_pem())
    sig_file = tmp_path / "sig.bin"
    sig_file.write_bytes(key.sign(MESSAGE))
    assert openssl_verifies(openssl, alg_id, pub_file, message_file, sig_file)
    # The check above can fail: OpenSSL refuses the same signature over another message.
    other = tmp_path / "other.bin"
    other.write_bytes(MESSAGE + b".")
    assert not openssl_verifies(openssl, alg_id, pub_file, other, sig_file)


@pytest.mark.parametrize("alg_id", ALGS)
def test_stellakeys_public_pem_loads_in_openssl(
    alg_id: str, openssl: OpenSSL, tmp_path: Path
) -> None:
    public = get_algorithm(alg_id).generate().public_key()
    pub_file = tmp_path / "pub.pem"
    pub_file.write_text(public.to_pem())
    assert openssl("pkey", "-pubin", "-in", pub_file, "-outform", "DER") == public.spki_der
    text = openssl("pkey", "-pubin", "-in", pub_file, "-noout", "-text").decode()
    expected = {
        "ed25519": "ED25519 Public-Key",
        "ecdsa-p256-sha256": "P-256",
        "ecdsa-p384-sha384": "P-384",
    }
    assert expected[alg_id] in text


@pytest.mark.parametrize("alg_id", ALGS)
def test_stellakeys_encrypted_private_pem_loads_in_openssl(
    alg_id: str, openssl: OpenSSL, tmp_path: Path, message_file: Path
) -> None:
    key = get_algorithm(alg_id).generate()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.to_encrypted_pem(b"correct horse"))
    pub = openssl("pkey", "-in", key_file, "-passin", "pass:correct horse", "-pubout")
    assert load_public_key_pem(pub) == key.public_key()
    refused = openssl.run("pkey", "-in", key_file, "-passin", "pass:wrong", "-pubout")
    assert refused.returncode != 0
    # OpenSSL signs with the exported key; stellakeys verifies with the original public key.
    signature = openssl_sign(
        openssl, alg_id, key_file, message_file, "-passin", "pass:correct horse"
    )
    key.public_key().verify(signature, MESSAGE)


# --- DSSE over the command line ------------------------------------------------------------


def test_openssl_signed_dsse_envelope_verifies(openssl: OpenSSL, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    openssl("genpkey", *GENPKEY["ed25519"], "-out", key_file)
    public = load_public_key_pem(openssl("pkey", "-in", key_file, "-pubout"))
    payload = b'{"_type":"https://in-toto.io/Statement/v1"}'
    pae_file = tmp_path / "pae.bin"
    pae_file.write_bytes(pae("application/vnd.in-toto+json", payload))
    sig = openssl("pkeyutl", "-sign", "-inkey", key_file, "-rawin", "-in", pae_file)
    blob = json.dumps(
        {
            "payload": base64.urlsafe_b64encode(payload).decode().rstrip("="),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": base64.b64encode(sig).decode()}],
        }
    )
    assert verify_envelope(Envelope.from_json(blob), [public]).ok


@pytest.mark.parametrize("alg_id", ["ed25519", "ecdsa-p256-sha256"])
def test_stellakeys_dsse_signature_verifies_in_openssl(
    alg_id: str, openssl: OpenSSL, tmp_path: Path
) -> None:
    key = get_algorithm(alg_id).generate()
    envelope = sign_envelope("application/vnd.in-toto+json", b"{}", [key])
    pub_file, pae_file, sig_file = tmp_path / "pub.pem", tmp_path / "pae.bin", tmp_path / "sig"
    pub_file.write_text(key.public_key().to_pem())
    pae_file.write_bytes(b"DSSEv1 28 application/vnd.in-toto+json 2 {}")
    sig_file.write_bytes(envelope.signatures[0].sig)
    assert openssl_verifies(openssl, alg_id, pub_file, pae_file, sig_file)

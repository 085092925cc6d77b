"""The algorithm registry and the Ed25519, ECDSA and ML-DSA backends.

Expected values come from outside stellakeys: RFC 8032 section 7.1, NIST ACVP ML-DSA keyGen
vectors, SEC 2 curve orders, and the OpenSSL command line.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from stellakeys.crypto import (
    PrivateKey,
    PublicKey,
    algorithm_of_spki,
    algorithms,
    get_algorithm,
    load_private_key_pem,
    load_public_key_der,
    load_public_key_pem,
)
from stellakeys.errors import (
    InvalidSignatureError,
    MalformedKeyError,
    StellaKeysError,
    UnknownAlgorithmError,
    UnsupportedKeyError,
)

if TYPE_CHECKING:
    from conftest import OpenSSL

PYCA_IDS = [
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "ml-dsa-44",
    "ml-dsa-65",
    "ml-dsa-87",
]
OPENSSL_READABLE = ["ed25519", "ecdsa-p256-sha256", "ecdsa-p384-sha384"]
ML_DSA_IDS = ["ml-dsa-44", "ml-dsa-65", "ml-dsa-87"]

CANONICAL_IDS = [
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "gost-r-34.10-2012-256",
    "gost-r-34.10-2012-512",
    "sm2-sm3",
    "ml-dsa-44",
    "ml-dsa-65",
    "ml-dsa-87",
]

# Every alias DESIGN.md names, with the canonical id it must resolve to.
DESIGN_ALIASES = {
    "SHA256-ED25519": "ed25519",
    "SHA256-ECDSA-P256": "ecdsa-p256-sha256",
    "ecdsa-p384": "ecdsa-p384-sha384",
    "GOST-R-34.10-2012": "gost-r-34.10-2012-256",
    "SM2-P256": "sm2-sm3",
    "ML-DSA-65": "ml-dsa-65",
    "ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-p256-sha256",
    "ecdsa-sha2-nistp384": "ecdsa-p384-sha384",
    "EdDSA": "ed25519",
    "ES256": "ecdsa-p256-sha256",
    "ES384": "ecdsa-p384-sha384",
}

# SubjectPublicKeyInfo AlgorithmIdentifier contents: (algorithm OID, parameter OID or None).
SPKI_OIDS = {
    "ed25519": ("1.3.101.112", None),  # RFC 8410: parameters absent
    "ecdsa-p256-sha256": ("1.2.840.10045.2.1", "1.2.840.10045.3.1.7"),
    "ecdsa-p384-sha384": ("1.2.840.10045.2.1", "1.3.132.0.34"),
    "ml-dsa-44": ("2.16.840.1.101.3.4.3.17", None),  # RFC 9881: parameters absent
    "ml-dsa-65": ("2.16.840.1.101.3.4.3.18", None),
    "ml-dsa-87": ("2.16.840.1.101.3.4.3.19", None),
}
# How OpenSSL 3.0's asn1parse names those OIDs (it has no names for ML-DSA yet).
OPENSSL_OID_NAMES = {
    "ed25519": [":ED25519"],
    "ecdsa-p256-sha256": [":id-ecPublicKey", ":prime256v1"],
    "ecdsa-p384-sha384": [":id-ecPublicKey", ":secp384r1"],
    "ml-dsa-44": [":2.16.840.1.101.3.4.3.17"],
    "ml-dsa-65": [":2.16.840.1.101.3.4.3.18"],
    "ml-dsa-87": [":2.16.840.1.101.3.4.3.19"],
}

# Curve orders from SEC 2, written out here rather than read from the code under test.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P384_N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    16,
)
CURVE_ORDERS = {"ecdsa-p256-sha256": P256_N, "ecdsa-p384-sha384": P384_N}

ML_DSA_SIZES = {  # FIPS 204 table 2: public key and signature bytes
    "ml-dsa-44": (1312, 2420),
    "ml-dsa-65": (1952, 3309),
    "ml-dsa-87": (2592, 4627),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {alg_id: get_algorithm(alg_id).generate() for alg_id in PYCA_IDS}


def raw_private_secrets(key: PrivateKey) -> list[bytes]:
    """The secret bytes of a key, recovered independently through its encrypted export."""
    decoded = serialization.load_pem_private_key(key.to_encrypted_pem(b"pw"), b"pw")
    pkcs8 = decoded.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if isinstance(decoded, ec.EllipticCurvePrivateKey):
        size = (decoded.curve.key_size + 7) // 8
        raw = decoded.private_numbers().private_value.to_bytes(size, "big")
    else:
        raw = decoded.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    return [raw, pkcs8]


def encodings_of(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        str(int.from_bytes(secret, "big")),
        repr(secret),
    ]


# --- DER helpers, independent of stellakeys ------------------------------------------------


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + der_length(len(body)) + body


def der_integer(value: int) -> bytes:
    """Minimal two's-complement INTEGER (non-negative values get a 0x00 if the top bit is set)."""
    if value < 0:
        body = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
    else:
        body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return der_tlv(0x02, body)


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = b""
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der_tlv(0x06, body)


def ecdsa_sig(r: int, s: int) -> bytes:
    return der_tlv(0x30, der_integer(r) + der_integer(s))


# --- registry ------------------------------------------------------------------------------


def test_canonical_ids_are_exactly_those_of_the_design() -> None:
    assert [a.id for a in algorithms()] == CANONICAL_IDS


@pytest.mark.parametrize("alg_id", CANONICAL_IDS)
def test_canonical_id_resolves_to_itself(alg_id: str) -> None:
    assert get_algorithm(alg_id).id == alg_id
    assert get_algorithm(alg_id.upper()).id == alg_id


@pytest.mark.parametrize(("alias", "canonical"), sorted(DESIGN_ALIASES.items()))
def test_design_aliases_resolve_case_insensitively(alias: str, canonical: str) -> None:
    for spelling in (alias, alias.lower(), alias.upper(), alias.swapcase()):
        assert get_algorithm(spelling).id == canonical, spelling
    assert get_algorithm(alias) is get_algorithm(canonical)


def test_registry_entries_say_what_their_algorithms_say() -> None:
    """The registry dispatches on a table so that backends load lazily (issue 20); each row
    must match the algorithm object it loads, or a name or an SPKI would dispatch wrongly."""
    from stellakeys.crypto import _registry

    for entry, alg in zip(_registry._ENTRIES, algorithms(), strict=True):
        assert (entry.id, entry.aliases) == (alg.id, alg.aliases)
        assert (entry.spki_oid, entry.spki_parameter_oid) == (alg.spki_oid, alg.spki_parameter_oid)


def test_pyca_backend_parses_public_keys_with_cryptographys_own_function() -> None:
    """The Ed25519 backend reaches ``load_der_public_key`` without importing the SSH half of
    ``cryptography.hazmat.primitives.serialization`` (issue 20); it must be the same function,
    and the format enums the same objects, so no key parses differently."""
    from cryptography.hazmat.primitives import serialization

    from stellakeys.crypto import _pyca

    assert _pyca.load_der_public_key is serialization.load_der_public_key
    assert _pyca.Encoding is serialization.Encoding
    assert _pyca.PublicFormat is serialization.PublicFormat
    assert _pyca.PrivateFormat is serialization.PrivateFormat


def test_no_alias_names_two_algorithms() -> None:
    seen: dict[str, str] = {}
    for alg in algorithms():
        for name in (alg.id, *alg.aliases):
            assert seen.setdefault(name.casefold(), alg.id) == alg.id, name


@pytest.mark.parametrize("name", ["rsa-pss-sha256", "", "ed448", "ecdsa-p521", " ed25519"])
def test_unknown_id_is_a_typed_error_listing_every_known_id(name: str) -> None:
    with pytest.raises(UnknownAlgorithmError) as info:
        get_algorithm(name)
    assert isinstance(info.value, StellaKeysError)
    assert isinstance(info.value, ValueError)
    assert info.value.known == CANONICAL_IDS
    message = str(info.value)
    assert repr(name) in message
    for alg_id in CANONICAL_IDS:
        assert alg_id in message


# --- generate / sign / verify --------------------------------------------------------------


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_sign_verify_round_trip(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    key = keys[alg_id]
    assert key.algorithm is get_algorithm(alg_id)
    assert key.public_key().algorithm is key.algorithm
    message = b"release 1.2.3 of pkg:pypi/stellakeys"
    signature = key.sign(message)
    key.public_key().verify(signature, message)
    assert key.public_key().is_valid(signature, message)
    assert not key.public_key().is_valid(signature, message + b"!")
    with pytest.raises(InvalidSignatureError):
        key.public_key().verify(signature, b"release 1.2.4 of pkg:pypi/stellakeys")


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_generate_draws_fresh_keys(alg_id: str) -> None:
    alg = get_algorithm(alg_id)
    assert alg.generate().public_key() != alg.generate().public_key()


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_signature_by_another_key_of_the_same_algorithm_fails(
    alg_id: str, keys: dict[str, PrivateKey]
) -> None:
    other = get_algorithm(alg_id).generate()
    with pytest.raises(InvalidSignatureError):
        keys[alg_id].public_key().verify(other.sign(b"m"), b"m")


@pytest.mark.parametrize(("signer_id", "verifier_id"), list(itertools.permutations(PYCA_IDS, 2)))
def test_signature_of_one_algorithm_never_verifies_under_another(
    signer_id: str, verifier_id: str, keys: dict[str, PrivateKey]
) -> None:
    signature = keys[signer_id].sign(b"m")
    # Only InvalidSignatureError: no ValueError or backend exception may leak out.
    with pytest.raises(InvalidSignatureError):
        keys[verifier_id].public_key().verify(signature, b"m")


# --- PEM, DER, fingerprints ----------------------------------------------------------------


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_public_pem_export_import_is_identity(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    public = keys[alg_id].public_key()
    pem = public.to_pem()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert pem.endswith("-----END PUBLIC KEY-----\n")
    assert all(len(line) <= 64 for line in pem.splitlines())
    loaded = load_public_key_pem(pem)
    assert loaded == public
    assert hash(loaded) == hash(public)
    assert loaded.algorithm is public.algorithm
    assert loaded.spki_der == public.spki_der
    assert loaded.fingerprint == public.fingerprint
    assert load_public_key_pem(pem.encode()) == public
    assert load_public_key_der(public.spki_der) == public
    assert get_algorithm(alg_id).load_public_der(public.spki_der) == public
    # The loaded key verifies what the original key signed.
    loaded.verify(keys[alg_id].sign(b"x"), b"x")


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_fingerprint_is_sha256_of_the_der_spki(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    public = keys[alg_id].public_key()
    pem_body = "".join(public.to_pem().splitlines()[1:-1])
    der = base64.b64decode(pem_body)
    assert public.fingerprint == "SHA256:" + hashlib.sha256(der).hexdigest()
    assert keys[alg_id].fingerprint == public.fingerprint
    # The DER is what the cryptography package writes for this key, byte for byte.
    reloaded = serialization.load_der_public_key(der)
    assert der == reloaded.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("alg_id", OPENSSL_READABLE)
def test_fingerprint_matches_openssl_der(
    alg_id: str, keys: dict[str, PrivateKey], openssl: OpenSSL, tmp_path: Path
) -> None:
    public = keys[alg_id].public_key()
    pem_file = tmp_path / "pub.pem"
    pem_file.write_text(public.to_pem())
    der = openssl("pkey", "-pubin", "-in", pem_file, "-outform", "DER")
    assert public.fingerprint == "SHA256:" + hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_spki_carries_the_standard_oids(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    alg = get_algorithm(alg_id)
    oid, parameter = SPKI_OIDS[alg_id]
    assert alg.spki_oid == oid
    assert alg.spki_parameter_oid == parameter
    spki = keys[alg_id].public_key().spki_der
    algorithm_identifier = der_tlv(0x30, der_oid(oid) + (der_oid(parameter) if parameter else b""))
    assert spki[0] == 0x30
    header = 2 if spki[1] < 0x80 else 2 + (spki[1] & 0x7F)
    assert spki[header : header + len(algorithm_identifier)] == algorithm_identifier
    assert algorithm_of_spki(spki) is alg


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_spki_oids_as_openssl_reads_them(
    alg_id: str, keys: dict[str, PrivateKey], openssl: OpenSSL, tmp_path: Path
) -> None:
    der_file = tmp_path / "pub.der"
    der_file.write_bytes(keys[alg_id].public_key().spki_der)
    listing = openssl("asn1parse", "-inform", "DER", "-in", der_file).decode()
    objects = [
        line.split("OBJECT", 1)[1].strip() for line in listing.splitlines() if "OBJECT" in line
    ]
    assert objects == OPENSSL_OID_NAMES[alg_id]


def test_spki_dispatch_tells_p256_from_p384(keys: dict[str, PrivateKey]) -> None:
    p256 = keys["ecdsa-p256-sha256"].public_key()
    p384 = keys["ecdsa-p384-sha384"].public_key()
    assert load_public_key_der(p256.spki_der).algorithm.id == "ecdsa-p256-sha256"
    assert load_public_key_der(p384.spki_der).algorithm.id == "ecdsa-p384-sha384"
    with pytest.raises(UnsupportedKeyError):
        get_algorithm("ecdsa-p256-sha256").load_public_der(p384.spki_der)


def test_unregistered_key_types_are_unsupported() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    pem = p521.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(UnsupportedKeyError):
        load_public_key_pem(pem)
    ed448_spki = (
        ed448.Ed448PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(UnsupportedKeyError):
        load_public_key_der(ed448_spki)


@pytest.mark.parametrize(
    "der_hex",
    [
        "",
        "30",
        "3000",
        "302a300506032b6570032100" + "00" * 31,  # truncated key
        "302a300506032b6570032100" + "00" * 32 + "00",  # trailing byte
        "30812a300506032b6570032100" + "00" * 32,  # non-minimal outer length
        "302a300506032b6570042100" + "00" * 32,  # OCTET STRING instead of BIT STRING
        "302a300504032b6570032100" + "00" * 32,  # not an OID
    ],
)
def test_malformed_spki_is_a_typed_error(der_hex: str) -> None:
    with pytest.raises((MalformedKeyError, UnsupportedKeyError)):
        load_public_key_der(bytes.fromhex(der_hex))


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "hello",
        "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        "-----END PUBLIC KEY-----\n-----BEGIN PUBLIC KEY-----\n",
    ],
)
def test_malformed_public_pem_is_a_typed_error(pem: str) -> None:
    with pytest.raises(MalformedKeyError):
        load_public_key_pem(pem)


# --- private keys --------------------------------------------------------------------------


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_encrypted_private_pem_round_trip(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    key = keys[alg_id]
    pem = key.to_encrypted_pem(b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    for loaded in (
        load_private_key_pem(pem, b"correct horse"),
        get_algorithm(alg_id).load_private_pem(pem, b"correct horse"),
    ):
        assert loaded.algorithm is key.algorithm
        assert loaded.public_key() == key.public_key()
        assert loaded.fingerprint == key.fingerprint
        key.public_key().verify(loaded.sign(b"after reload"), b"after reload")
    # Two exports of the same key differ (fresh salt and IV) but hold the same key.
    assert key.to_encrypted_pem(b"correct horse") != pem


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_wrong_or_missing_passphrase_is_malformed_key(
    alg_id: str, keys: dict[str, PrivateKey]
) -> None:
    pem = keys[alg_id].to_encrypted_pem(b"correct horse")
    with pytest.raises(MalformedKeyError) as info:
        load_private_key_pem(pem, b"battery staple")
    assert "battery" not in str(info.value)
    with pytest.raises(MalformedKeyError):
        load_private_key_pem(pem, None)
    with pytest.raises(MalformedKeyError):
        get_algorithm(alg_id).load_private_pem(pem, b"battery staple")


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_export_needs_a_passphrase(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        keys[alg_id].to_encrypted_pem(b"")


def test_private_pem_of_another_algorithm_is_refused(keys: dict[str, PrivateKey]) -> None:
    pem = keys["ed25519"].to_encrypted_pem(b"pw")
    with pytest.raises(UnsupportedKeyError):
        get_algorithm("ecdsa-p256-sha256").load_private_pem(pem, b"pw")
    p384 = keys["ecdsa-p384-sha384"].to_encrypted_pem(b"pw")
    with pytest.raises(UnsupportedKeyError):
        get_algorithm("ecdsa-p256-sha256").load_private_pem(p384, b"pw")


@pytest.mark.parametrize("pem", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_malformed_private_pem_is_a_typed_error(pem: bytes) -> None:
    with pytest.raises(MalformedKeyError):
        load_private_key_pem(pem, None)


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_repr_and_str_of_private_key_reveal_no_secret(
    alg_id: str, keys: dict[str, PrivateKey]
) -> None:
    key = keys[alg_id]
    shown = [repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})]
    secrets = raw_private_secrets(key)
    assert len(secrets[0]) >= 32
    for text in shown:
        for secret in secrets:
            for encoded in encodings_of(secret):
                assert encoded not in text
    # The repr is still useful: it names the algorithm and the public fingerprint.
    assert alg_id in repr(key)
    assert key.fingerprint in repr(key)


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_private_key_cannot_be_pickled(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(keys[alg_id], protocol=protocol)


@pytest.mark.parametrize("alg_id", PYCA_IDS)
def test_public_keys_compare_by_spki(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    public = keys[alg_id].public_key()
    other = get_algorithm(alg_id).generate().public_key()
    assert public != other
    assert len({public, load_public_key_der(public.spki_der), other}) == 2
    assert isinstance(public, PublicKey)
    assert public.fingerprint in repr(public)


# --- known answers -------------------------------------------------------------------------

# RFC 8032 section 7.1: (secret key seed, public key, message, signature), all hex.
RFC8032_ED25519 = {
    "TEST 1": (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    "TEST 2": (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    "TEST 3": (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    "TEST SHA(abc)": (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
}
# RFC 8410 section 4: the fixed DER prefix of an Ed25519 SubjectPublicKeyInfo.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def test_rfc8032_sha_abc_message_is_sha512_of_abc() -> None:
    assert RFC8032_ED25519["TEST SHA(abc)"][2] == hashlib.sha512(b"abc").hexdigest()


@pytest.mark.parametrize("name", sorted(RFC8032_ED25519))
def test_ed25519_rfc8032_known_answers(name: str) -> None:
    seed, public, message, signature = (bytes.fromhex(v) for v in RFC8032_ED25519[name])
    key = get_algorithm("ed25519").from_seed(seed)  # type: ignore[attr-defined]
    assert key.public_key().spki_der == ED25519_SPKI_PREFIX + public
    assert key.fingerprint == "SHA256:" + hashlib.sha256(ED25519_SPKI_PREFIX + public).hexdigest()
    assert key.sign(message) == signature
    verifier = load_public_key_der(ED25519_SPKI_PREFIX + public)
    verifier.verify(signature, message)
    for i in (0, 31, 32, 63):  # a flipped bit in R or in S
        bad = bytearray(signature)
        bad[i] ^= 0x01
        with pytest.raises(InvalidSignatureError):
            verifier.verify(bytes(bad), message)


# NIST ACVP ML-DSA-keyGen-FIPS204, tcId 1 / 26 / 51: seed -> first 32 bytes and SHA-256 of pk.
ACVP_ML_DSA_KEYGEN = {
    "ml-dsa-44": (
        "D71361C000F9A7BC99DFB425BCB6BB27C32C36AB444FF3708B2D93B4E66D5B5B",
        "B845FA2881407A59183071629B08223128116014FB58FF6BB4C8C9FE19CF5B0B",
        "451A808C522218FADBDAB146FC12004B0741C7D069F238F43AD77216159F6A34",
    ),
    "ml-dsa-65": (
        "1BD67DC782B2958E189E315C040DD1F64C8AB232A6A170E1A7A52C33F10851B1",
        "43AD6560D3BB684667A559EE6EC7C816020E5B65671F270F2353A8C912B6C26B",
        "6FB1146B85539FB5C53D35B66DAE94202FCD5575A537172CF1156220476F7920",
    ),
    "ml-dsa-87": (
        "F7052FBB921759CD8716773BA6355630121D6927899FDDA5768E2BC240FCCB7B",
        "18DFF392DEF5756EA23519A240E6B5CDCF912D89CD94DEC9DC71E53F8CDF37D9",
        "40298270777D3306D2FCB6B4691D7A7AB799CD1069EEA88F843CF0EC26D4B01F",
    ),
}


@pytest.mark.parametrize("alg_id", ML_DSA_IDS)
def test_ml_dsa_acvp_keygen_known_answer(alg_id: str) -> None:
    seed, pk_prefix, pk_sha256 = (bytes.fromhex(v) for v in ACVP_ML_DSA_KEYGEN[alg_id])
    pk_size, _ = ML_DSA_SIZES[alg_id]
    key = get_algorithm(alg_id).from_seed(seed)  # type: ignore[attr-defined]
    pk = key.public_key().spki_der[-pk_size:]
    assert pk[:32] == pk_prefix
    assert hashlib.sha256(pk).digest() == pk_sha256
    # The SPKI is exactly AlgorithmIdentifier + BIT STRING around the raw FIPS 204 key.
    oid, _ = SPKI_OIDS[alg_id]
    expected = der_tlv(0x30, der_tlv(0x30, der_oid(oid)) + der_tlv(0x03, b"\x00" + pk))
    assert key.public_key().spki_der == expected


@pytest.mark.parametrize("alg_id", ML_DSA_IDS)
def test_ml_dsa_sizes_and_determinism(alg_id: str) -> None:
    pk_size, sig_size = ML_DSA_SIZES[alg_id]
    alg = get_algorithm(alg_id)
    seed = bytes(range(32))
    a, b = alg.from_seed(seed), alg.from_seed(seed)  # type: ignore[attr-defined]
    assert a.public_key() == b.public_key()
    assert a.public_key() != alg.from_seed(bytes(32)).public_key()  # type: ignore[attr-defined]
    der = a.public_key().spki_der
    assert serialization.load_der_public_key(der).public_bytes_raw() == der[-pk_size:]
    signature = a.sign(b"m")
    assert len(signature) == sig_size
    b.public_key().verify(signature, b"m")


def test_ml_dsa_levels_give_different_keys_from_one_seed() -> None:
    seed = bytes([7]) * 32
    fingerprints = {get_algorithm(a).from_seed(seed).fingerprint for a in ML_DSA_IDS}  # type: ignore[attr-defined]
    assert len(fingerprints) == 3


# --- negative signatures -------------------------------------------------------------------


@pytest.mark.parametrize("alg_id", ["ecdsa-p256-sha256", "ecdsa-p384-sha384"])
def test_ecdsa_curve_orders(alg_id: str) -> None:
    assert get_algorithm(alg_id).order == CURVE_ORDERS[alg_id]  # type: ignore[attr-defined]


def _ecdsa_variants(r: int, s: int, n: int, valid: bytes) -> dict[str, bytes]:
    seq_body = der_integer(r) + der_integer(s)
    r_body = der_integer(r)[2:]
    return {
        "r = 0": ecdsa_sig(0, s),
        "s = 0": ecdsa_sig(r, 0),
        "r = n": ecdsa_sig(n, s),
        "s = n": ecdsa_sig(r, n),
        "r + n": ecdsa_sig(r + n, s),
        "s + n": ecdsa_sig(r, s + n),
        "r = n + 1": ecdsa_sig(n + 1, s),
        "negative r": ecdsa_sig(-r, s),
        "negative s": ecdsa_sig(r, -s),
        "r, s swapped": ecdsa_sig(s, r),
        "trailing zero byte": valid + b"\x00",
        "trailing garbage": valid + b"garbage",
        "truncated": valid[:-1],
        "empty": b"",
        "non-minimal integer (leading zero)": der_tlv(
            0x30, b"\x02" + der_length(len(r_body) + 1) + b"\x00" + r_body + der_integer(s)
        ),
        "BER long-form sequence length": b"\x30\x81" + bytes([len(seq_body)]) + seq_body,
        "BER long-form integer length": der_tlv(
            0x30, b"\x02\x81" + bytes([len(r_body)]) + r_body + der_integer(s)
        ),
        "indefinite length": b"\x30\x80" + seq_body + b"\x00\x00",
        "SET instead of SEQUENCE": der_tlv(0x31, seq_body),
        "raw r || s": r.to_bytes((n.bit_length() + 7) // 8, "big")
        + s.to_bytes((n.bit_length() + 7) // 8, "big"),
        "three integers": der_tlv(0x30, seq_body + der_integer(1)),
    }


@pytest.mark.parametrize("alg_id", ["ecdsa-p256-sha256", "ecdsa-p384-sha384"])
def test_ecdsa_rejects_out_of_range_and_non_canonical_signatures(
    alg_id: str, keys: dict[str, PrivateKey]
) -> None:
    key = keys[alg_id]
    public = key.public_key()
    message = b"ecdsa negative cases"
    valid = key.sign(message)
    r, s = decode_dss_signature(valid)
    # The helpers rebuild the exact DER that the backend writes, so every variant below differs
    # from a valid signature only in the one way it names.
    assert ecdsa_sig(r, s) == valid
    public.verify(ecdsa_sig(r, s), message)
    variants = _ecdsa_variants(r, s, CURVE_ORDERS[alg_id], valid)
    for name, bad in variants.items():
        assert bad != valid, name
        with pytest.raises(InvalidSignatureError):
            public.verify(bad, message)
        assert not public.is_valid(bad, message), name


@pytest.mark.parametrize("alg_id", ["ecdsa-p256-sha256", "ecdsa-p384-sha384"])
def test_ecdsa_accepts_high_s_like_openssl(alg_id: str, keys: dict[str, PrivateKey]) -> None:
    # OpenSSL neither writes nor requires low-S signatures, so neither may stellakeys: half of
    # OpenSSL's signatures would be refused otherwise. (n - s) is the other valid s.
    key = keys[alg_id]
    r, s = decode_dss_signature(key.sign(b"m"))
    key.public_key().verify(ecdsa_sig(r, CURVE_ORDERS[alg_id] - s), b"m")


def test_ecdsa_tampered_message_wrong_key_and_wrong_curve(keys: dict[str, PrivateKey]) -> None:
    p256, p384 = keys["ecdsa-p256-sha256"], keys["ecdsa-p384-sha384"]
    signature = p256.sign(b"message")
    with pytest.raises(InvalidSignatureError):
        p256.public_key().verify(signature, b"messagf")
    with pytest.raises(InvalidSignatureError):
        get_algorithm("ES256").generate().public_key().verify(signature, b"message")
    with pytest.raises(InvalidSignatureError):
        p384.public_key().verify(signature, b"message")
    with pytest.raises(InvalidSignatureError):
        p256.public_key().verify(p384.sign(b"message"), b"message")


def test_ed25519_rejects_wrong_lengths_and_non_canonical_s(keys: dict[str, PrivateKey]) -> None:
    key = keys["ed25519"]
    signature = key.sign(b"m")
    public = key.public_key()
    for bad in (b"", signature[:63], signature + b"\x00", signature * 2):
        with pytest.raises(InvalidSignatureError):
            public.verify(bad, b"m")
    # S + L encodes the same scalar mod L; RFC 8032 requires rejecting S >= L (malleability).
    group_order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + group_order).to_bytes(32, "little")
    with pytest.raises(InvalidSignatureError):
        public.verify(malleated, b"m")


@pytest.mark.parametrize("alg_id", ML_DSA_IDS)
def test_ml_dsa_rejects_wrong_length_and_tampering(
    alg_id: str, keys: dict[str, PrivateKey]
) -> None:
    key = keys[alg_id]
    signature = key.sign(b"m")
    public = key.public_key()
    for bad in (b"", signature[:-1], signature + b"\x00"):
        with pytest.raises(InvalidSignatureError, match="bytes"):
            public.verify(bad, b"m")
    for i in (0, len(signature) // 2, len(signature) - 1):
        tampered = bytearray(signature)
        tampered[i] ^= 0x40
        with pytest.raises(InvalidSignatureError):
            public.verify(bytes(tampered), b"m")
    with pytest.raises(InvalidSignatureError):
        public.verify(signature, b"n")

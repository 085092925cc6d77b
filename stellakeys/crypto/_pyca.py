"""Algorithms backed by the ``cryptography`` package: Ed25519, ECDSA P-256/P-384, ML-DSA."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.crypto._ecpoint import P256_CURVE, P384_CURVE, ShortWeierstrass, check_sec1_point
from stellakeys.crypto._ecsig import parse_strict_der
from stellakeys.crypto._edwards import check_public_key as check_ed25519_point
from stellakeys.crypto._spki import read_spki_algorithm, read_spki_key_bits
from stellakeys.errors import (
    InvalidSignatureError,
    MalformedKeyError,
    UnsupportedKeyError,
    WeakKeyError,
)

_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER
_RAW = serialization.Encoding.Raw
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_PKCS8 = serialization.PrivateFormat.PKCS8


def _load_public(der: bytes, expected: type[Any] | tuple[type[Any], ...]) -> Any:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedKeyError(f"cannot parse public key: {exc}") from None
    if not isinstance(key, expected):
        raise UnsupportedKeyError(f"public key is a {type(key).__name__}")
    return key


class NotPycaKeyError(UnsupportedKeyError):
    """The key type is one ``cryptography`` does not handle (SM2, GOST): try the native backend."""


def _decode_private(pem: bytes, passphrase: bytes | None) -> Any:
    try:
        return serialization.load_pem_private_key(pem, passphrase)
    except UnsupportedAlgorithm as exc:
        raise NotPycaKeyError(str(exc)) from None
    except TypeError as exc:
        # cryptography raises TypeError for "password given but key not encrypted" and the
        # reverse; both are caller errors, not bugs.
        raise MalformedKeyError(str(exc)) from None
    except ValueError:
        # Deliberately vague: a wrong passphrase and a corrupt file look the same to OpenSSL,
        # and the message must not hint at which bytes were wrong.
        raise MalformedKeyError(
            "cannot decrypt or parse private key (wrong passphrase or corrupt PEM)"
        ) from None


def _load_private(pem: bytes, passphrase: bytes | None, expected: type[Any]) -> Any:
    key = _decode_private(pem, passphrase)
    if not isinstance(key, expected):
        raise UnsupportedKeyError(f"private key is a {type(key).__name__}")
    return key


def _encrypted_pem(key: Any, passphrase: bytes) -> bytes:
    if not passphrase:
        raise ValueError("a non-empty passphrase is required to export a private key")
    pem: bytes = key.private_bytes(_PEM, _PKCS8, serialization.BestAvailableEncryption(passphrase))
    return pem


class _PycaPublicKey(PublicKey):
    __slots__ = ("_alg", "_key")

    def __init__(self, alg: Algorithm, key: Any) -> None:
        super().__init__(key.public_bytes(_DER, _SPKI))
        self._alg = alg
        self._key = key

    @property
    def algorithm(self) -> Algorithm:
        return self._alg


class _PycaPrivateKey(PrivateKey):
    __slots__ = ("_alg", "_key", "_public")

    def __init__(self, alg: Algorithm, key: Any, public: PublicKey) -> None:
        self._alg = alg
        self._key = key
        self._public = public

    @property
    def algorithm(self) -> Algorithm:
        return self._alg

    def public_key(self) -> PublicKey:
        return self._public

    def to_encrypted_pem(self, passphrase: bytes) -> bytes:
        return _encrypted_pem(self._key, passphrase)


# --- Ed25519 --------------------------------------------------------------------------------


class _Ed25519PublicKey(_PycaPublicKey):
    __slots__ = ()

    def verify(self, signature: bytes, data: bytes) -> None:
        if len(signature) != 64:
            raise InvalidSignatureError("Ed25519 signature must be 64 bytes")
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise InvalidSignatureError("Ed25519 signature does not verify") from None


class _Ed25519PrivateKey(_PycaPrivateKey):
    __slots__ = ()

    def sign(self, data: bytes) -> bytes:
        sig: bytes = self._key.sign(data)
        return sig


class Ed25519(Algorithm):
    id = "ed25519"
    aliases = ("SHA256-ED25519", "EdDSA", "Ed25519")
    spki_oid = "1.3.101.112"
    display_name = "Ed25519 (RFC 8032)"

    def _wrap(self, key: ed25519.Ed25519PrivateKey) -> PrivateKey:
        return _Ed25519PrivateKey(self, key, _Ed25519PublicKey(self, key.public_key()))

    def generate(self) -> PrivateKey:
        return self._wrap(ed25519.Ed25519PrivateKey.generate())

    def from_seed(self, seed: bytes) -> PrivateKey:
        """The key of an RFC 8032 32-byte seed (known-answer tests, deterministic fixtures)."""
        return self._wrap(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        key = _load_public(spki_der, ed25519.Ed25519PublicKey)
        # OpenSSL takes any 32 bytes; refuse the points that make forgery trivial or give one
        # key two encodings (stellakeys/crypto/_edwards.py). Every import path ends here.
        check_ed25519_point(key.public_bytes(_RAW, serialization.PublicFormat.Raw))
        return _Ed25519PublicKey(self, key)

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        return self._wrap(_load_private(pem, passphrase, ed25519.Ed25519PrivateKey))


# --- ECDSA ----------------------------------------------------------------------------------


class _EcdsaPublicKey(_PycaPublicKey):
    __slots__ = ()
    _alg: Ecdsa

    def verify(self, signature: bytes, data: bytes) -> None:
        parse_strict_der(signature, self._alg.order)
        try:
            self._key.verify(signature, data, self._alg.signature_algorithm)
        except InvalidSignature:
            raise InvalidSignatureError("ECDSA signature does not verify") from None


class _EcdsaPrivateKey(_PycaPrivateKey):
    __slots__ = ()
    _alg: Ecdsa

    def sign(self, data: bytes) -> bytes:
        sig: bytes = self._key.sign(data, self._alg.signature_algorithm)
        return sig


class Ecdsa(Algorithm):
    """ECDSA over a NIST curve with its matching SHA-2 hash; signatures DER as OpenSSL writes."""

    spki_oid = "1.2.840.10045.2.1"

    def __init__(
        self,
        id: str,
        aliases: tuple[str, ...],
        curve: ec.EllipticCurve,
        curve_oid: str,
        hash_algorithm: hashes.HashAlgorithm,
        order: int,
        display_name: str,
        point_curve: ShortWeierstrass,
    ) -> None:
        self.id = id
        self.point_curve = point_curve
        self.aliases = aliases
        self.curve = curve
        self.spki_parameter_oid = curve_oid
        self.signature_algorithm = ec.ECDSA(hash_algorithm)
        self.order = order
        self.display_name = display_name

    def _wrap(self, key: ec.EllipticCurvePrivateKey) -> PrivateKey:
        return _EcdsaPrivateKey(self, key, _EcdsaPublicKey(self, key.public_key()))

    def generate(self) -> PrivateKey:
        return self._wrap(ec.generate_private_key(self.curve))

    def _check_curve(self, key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
        if key.curve.name != self.curve.name:
            raise UnsupportedKeyError(f"{self.id} needs a {self.curve.name} key")

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        # Infinity, hybrid form, coordinates >= p and off-curve points are refused by our
        # own rules (stellakeys/crypto/_ecpoint.py) before OpenSSL parses the key. Compressed
        # points are accepted: the SPKI is re-encoded uncompressed, so the fingerprint is the
        # same whichever form came in.
        if read_spki_algorithm(spki_der).parameter_oid != self.spki_parameter_oid:
            raise UnsupportedKeyError(f"{self.id} needs a {self.curve.name} key")
        check_sec1_point(read_spki_key_bits(spki_der), self.point_curve)
        key = _load_public(spki_der, ec.EllipticCurvePublicKey)
        self._check_curve(key)
        return _EcdsaPublicKey(self, key)

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        key = _load_private(pem, passphrase, ec.EllipticCurvePrivateKey)
        self._check_curve(key)
        return self._wrap(key)


P256 = Ecdsa(
    "ecdsa-p256-sha256",
    ("SHA256-ECDSA-P256", "ecdsa-p256", "ecdsa-sha2-nistp256", "ES256", "P-256"),
    ec.SECP256R1(),
    "1.2.840.10045.3.1.7",
    hashes.SHA256(),
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ECDSA P-256 with SHA-256",
    P256_CURVE,
)
P384 = Ecdsa(
    "ecdsa-p384-sha384",
    ("SHA384-ECDSA-P384", "ecdsa-p384", "ecdsa-sha2-nistp384", "ES384", "P-384"),
    ec.SECP384R1(),
    "1.3.132.0.34",
    hashes.SHA384(),
    int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "ECDSA P-384 with SHA-384",
    P384_CURVE,
)


# --- ML-DSA (FIPS 204) ----------------------------------------------------------------------


class _MlDsaPublicKey(_PycaPublicKey):
    __slots__ = ()
    _alg: MlDsa

    def verify(self, signature: bytes, data: bytes) -> None:
        if len(signature) != self._alg.signature_size:
            raise InvalidSignatureError(
                f"{self._alg.id} signature must be {self._alg.signature_size} bytes"
            )
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise InvalidSignatureError(f"{self._alg.id} signature does not verify") from None


class _MlDsaPrivateKey(_PycaPrivateKey):
    __slots__ = ()

    def sign(self, data: bytes) -> bytes:
        sig: bytes = self._key.sign(data)
        return sig


class MlDsa(Algorithm):
    """ML-DSA (FIPS 204, pure mode, empty context), raw signatures."""

    def __init__(
        self,
        level: int,
        oid: str,
        private_cls: Any,
        public_cls: Any,
        signature_size: int,
        public_key_size: int,
    ) -> None:
        self.id = f"ml-dsa-{level}"
        self.public_key_size = public_key_size
        self.aliases = (f"ML-DSA-{level}", f"MLDSA{level}", f"mldsa{level}")
        self.spki_oid = oid
        self.display_name = f"ML-DSA-{level} (FIPS 204)"
        self._private_cls = private_cls
        self._public_cls = public_cls
        self.signature_size = signature_size

    def _wrap(self, key: Any) -> PrivateKey:
        return _MlDsaPrivateKey(self, key, _MlDsaPublicKey(self, key.public_key()))

    def generate(self) -> PrivateKey:
        return self._wrap(self._private_cls.generate())

    def from_seed(self, seed: bytes) -> PrivateKey:
        """The key of a FIPS 204 32-byte seed xi (known-answer tests)."""
        return self._wrap(self._private_cls.from_seed_bytes(seed))

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        # Any pk of the right length is a well-formed (rho, t1); the length is the one rule,
        # checked here by name rather than left to the backend's "invalid key".
        size = len(read_spki_key_bits(spki_der))
        if size != self.public_key_size:
            raise WeakKeyError(
                f"{self.id} public key must be {self.public_key_size} bytes, not {size}"
            )
        return _MlDsaPublicKey(self, _load_public(spki_der, self._public_cls))

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        return self._wrap(_load_private(pem, passphrase, self._private_cls))


ML_DSA_44 = MlDsa(
    44, "2.16.840.1.101.3.4.3.17", mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey, 2420, 1312
)
ML_DSA_65 = MlDsa(
    65, "2.16.840.1.101.3.4.3.18", mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey, 3309, 1952
)
ML_DSA_87 = MlDsa(
    87, "2.16.840.1.101.3.4.3.19", mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey, 4627, 2592
)
ED25519 = Ed25519()


def load_pyca_private_pem(pem: bytes, passphrase: bytes | None) -> PrivateKey:
    """Decrypt once and dispatch on the key type; NotPycaKeyError for SM2 and GOST keys."""
    key = _decode_private(pem, passphrase)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ED25519._wrap(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        for alg in (P256, P384):
            if key.curve.name == alg.curve.name:
                return alg._wrap(key)
    for mlalg in (ML_DSA_44, ML_DSA_65, ML_DSA_87):
        if isinstance(key, mlalg._private_cls):
            return mlalg._wrap(key)
    raise UnsupportedKeyError(f"no registered algorithm for a {type(key).__name__}")

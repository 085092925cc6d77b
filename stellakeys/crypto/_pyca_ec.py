"""ECDSA over NIST P-256 and P-384, backed by the ``cryptography`` package."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.crypto._ecpoint import P256_CURVE, P384_CURVE, ShortWeierstrass, check_sec1_point
from stellakeys.crypto._ecsig import parse_strict_der
from stellakeys.crypto._pyca import (
    PycaPrivateKey,
    PycaPublicKey,
    load_private,
    load_public,
)
from stellakeys.crypto._spki import read_spki_algorithm, read_spki_key_bits
from stellakeys.errors import InvalidSignatureError, UnsupportedKeyError


class _EcdsaPublicKey(PycaPublicKey):
    __slots__ = ()
    _alg: Ecdsa

    def verify(self, signature: bytes, data: bytes) -> None:
        parse_strict_der(signature, self._alg.order)
        try:
            self._key.verify(signature, data, self._alg.signature_algorithm)
        except InvalidSignature:
            raise InvalidSignatureError("ECDSA signature does not verify") from None


class _EcdsaPrivateKey(PycaPrivateKey):
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

    def wrap(self, key: ec.EllipticCurvePrivateKey) -> PrivateKey:
        return _EcdsaPrivateKey(self, key, _EcdsaPublicKey(self, key.public_key()))

    def generate(self) -> PrivateKey:
        return self.wrap(ec.generate_private_key(self.curve))

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
        key = load_public(spki_der, ec.EllipticCurvePublicKey)
        self._check_curve(key)
        return _EcdsaPublicKey(self, key)

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        key = load_private(pem, passphrase, ec.EllipticCurvePrivateKey)
        self._check_curve(key)
        return self.wrap(key)


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

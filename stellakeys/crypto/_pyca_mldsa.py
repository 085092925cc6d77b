"""ML-DSA (FIPS 204) signatures, backed by the ``cryptography`` package."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.crypto._pyca import (
    PycaPrivateKey,
    PycaPublicKey,
    load_private,
    load_public,
)
from stellakeys.crypto._spki import read_spki_key_bits
from stellakeys.errors import InvalidSignatureError, WeakKeyError


class _MlDsaPublicKey(PycaPublicKey):
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


class _MlDsaPrivateKey(PycaPrivateKey):
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
        self.private_cls = private_cls
        self.public_cls = public_cls
        self.signature_size = signature_size

    def wrap(self, key: Any) -> PrivateKey:
        return _MlDsaPrivateKey(self, key, _MlDsaPublicKey(self, key.public_key()))

    def generate(self) -> PrivateKey:
        return self.wrap(self.private_cls.generate())

    def from_seed(self, seed: bytes) -> PrivateKey:
        """The key of a FIPS 204 32-byte seed xi (known-answer tests)."""
        return self.wrap(self.private_cls.from_seed_bytes(seed))

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        # Any pk of the right length is a well-formed (rho, t1); the length is the one rule,
        # checked here by name rather than left to the backend's "invalid key".
        size = len(read_spki_key_bits(spki_der))
        if size != self.public_key_size:
            raise WeakKeyError(
                f"{self.id} public key must be {self.public_key_size} bytes, not {size}"
            )
        return _MlDsaPublicKey(self, load_public(spki_der, self.public_cls))

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        return self.wrap(load_private(pem, passphrase, self.private_cls))


ML_DSA_44 = MlDsa(
    44, "2.16.840.1.101.3.4.3.17", mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey, 2420, 1312
)
ML_DSA_65 = MlDsa(
    65, "2.16.840.1.101.3.4.3.18", mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey, 3309, 1952
)
ML_DSA_87 = MlDsa(
    87, "2.16.840.1.101.3.4.3.19", mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey, 4627, 2592
)

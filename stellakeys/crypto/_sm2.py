"""SM2 signatures with SM3 (GB/T 32918.2-2016, GM/T 0003.2-2012), backed by the system libcrypto.

Wire formats are OpenSSL's: SubjectPublicKeyInfo with id-ecPublicKey and the named curve
1.2.156.10197.1.301, signatures as DER ``SEQUENCE { r INTEGER, s INTEGER }``.

The distinguishing ID (user ID) enters every signature through Z_A = SM3(ENTL || ID || a || b ||
G || Q). Our default is ``1234567812345678`` (GM/T 0009-2012, and the ID of the GB/T 32918 example).
Beware: the OpenSSL 3.0 *command line* does not use that default; without ``-sigopt distid:...``
``openssl dgst -sm3 -sign`` hashes an *empty* ID. To interoperate with it, pass the ID explicitly
on the OpenSSL side (``-sigopt distid:1234567812345678``), or use
``SM2_SM3.with_distinguishing_id(b"")`` on ours.

A different ID is a different algorithm instance, so the ID cannot be forgotten between signing
and verifying::

    alice = SM2_SM3.with_distinguishing_id(b"ALICE123@YAHOO.COM")
    key = alice.generate()                      # signs with Alice's ID
    peer = alice.load_public_der(spki_der)      # verifies with Alice's ID

Verification parses the DER strictly first (canonical encoding, no trailing bytes, r and s in
[1, n-1]) and only then asks OpenSSL. Nonces come from OpenSSL's CSPRNG.
"""

from __future__ import annotations

import stellakeys.crypto._libcrypto as native
from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.crypto._ecpoint import SM2_CURVE, check_sec1_point
from stellakeys.crypto._ecsig import parse_strict_der
from stellakeys.crypto._spki import read_spki_algorithm, read_spki_key_bits
from stellakeys.errors import (
    AlgorithmOptionError,
    InvalidSignatureError,
    MalformedKeyError,
    UnsupportedKeyError,
    WeakKeyError,
)

DEFAULT_DISTINGUISHING_ID = b"1234567812345678"

#: Order n of the base point of the SM2 recommended curve (GB/T 32918.5-2017).
SM2_ORDER = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123

#: ENTL, the bit length of the ID, is a two-byte field, so an ID has at most 8191 bytes; OpenSSL
#: refuses 8191 itself (it checks ``id_len >= 65535 / 8``), so 8190 is the portable maximum.
MAX_DISTINGUISHING_ID_BYTES = 0xFFFF // 8 - 1

#: The SubjectPublicKeyInfo OpenSSL writes for SM2 is this 27-byte header (SEQUENCE,
#: AlgorithmIdentifier with the two OIDs, BIT STRING of 66 bytes, 0x04) + X || Y.
_SPKI_LENGTH = 91
_SPKI_POINT_TAG_OFFSET = 26


class Sm2(Algorithm):
    """SM2 with SM3 and one fixed distinguishing ID."""

    id = "sm2-sm3"
    aliases = ("SM2-P256", "SM2", "sm2")
    spki_oid = "1.2.840.10045.2.1"
    spki_parameter_oid = "1.2.156.10197.1.301"
    display_name = "SM2 with SM3 (GB/T 32918)"
    order = SM2_ORDER

    def __init__(self, distinguishing_id: bytes = DEFAULT_DISTINGUISHING_ID) -> None:
        if not isinstance(distinguishing_id, bytes):
            raise TypeError("the SM2 distinguishing ID must be bytes")
        if len(distinguishing_id) > MAX_DISTINGUISHING_ID_BYTES:
            raise ValueError(
                f"the SM2 distinguishing ID is limited to {MAX_DISTINGUISHING_ID_BYTES} bytes"
            )
        self.distinguishing_id = distinguishing_id

    options = ("distinguishing_id",)

    def with_distinguishing_id(self, distinguishing_id: bytes) -> Sm2:
        """The same algorithm with another ID: its keys sign and verify with that ID.

        Kept for compatibility; ``get_algorithm("sm2-sm3", distinguishing_id=...)`` and
        ``with_options`` are the documented spelling."""
        return Sm2(distinguishing_id)

    def _with_options(self, given: dict[str, object]) -> Sm2:
        value = given["distinguishing_id"]
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes):
            raise AlgorithmOptionError("the SM2 distinguishing_id must be bytes or text")
        if len(value) > MAX_DISTINGUISHING_ID_BYTES:
            raise AlgorithmOptionError(
                f"the SM2 distinguishing_id is limited to {MAX_DISTINGUISHING_ID_BYTES} bytes"
            )
        return Sm2(value)

    def __repr__(self) -> str:
        if self.distinguishing_id == DEFAULT_DISTINGUISHING_ID:
            return f"<Algorithm {self.id}>"
        return f"<Algorithm {self.id} distinguishing_id={self.distinguishing_id!r}>"

    # -- keys --

    def generate(self) -> PrivateKey:
        return self.wrap_private(native.generate_by_name("SM2"))

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        # Our own point rules first (infinity, hybrid form, coordinates >= p, off-curve), so
        # the error says what is wrong rather than OpenSSL's "cannot parse".
        if read_spki_algorithm(spki_der) != (self.spki_oid, self.spki_parameter_oid):
            raise UnsupportedKeyError("public key is not an SM2 key")
        check_sec1_point(read_spki_key_bits(spki_der), SM2_CURVE)
        key = native.load_spki(spki_der)
        if key is None:
            raise MalformedKeyError("cannot parse SM2 public key")
        return self._wrap_public(key)

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        from stellakeys.crypto._native_pem import decode_native_private_pem

        key = decode_native_private_pem(pem, passphrase)
        return self.wrap_private(key)

    def _wrap_public(self, key: native.Pkey) -> Sm2PublicKey:
        if not key.is_a("SM2"):
            raise UnsupportedKeyError("public key is not an SM2 key")
        if not native.check_public(key):
            raise WeakKeyError("SM2 public key is not a valid point of the SM2 curve")
        spki = native.spki_der(key)
        # One key, one fingerprint: the same point sent compressed would hash differently.
        if len(spki) != _SPKI_LENGTH or spki[_SPKI_POINT_TAG_OFFSET] != 0x04:
            raise WeakKeyError("SM2 public key must be an uncompressed point")
        return Sm2PublicKey(self, key, spki)

    def wrap_private(self, key: native.Pkey) -> Sm2PrivateKey:
        """Validate an SM2 EVP_PKEY and wrap it; refuses d outside [1, n-2] and Q != d*G."""
        if not key.is_a("SM2"):
            raise UnsupportedKeyError("private key is not an SM2 key")
        # EVP_PKEY_check runs OpenSSL's SM2 private check (1 <= d <= n-2: SM2 inverts 1+d),
        # the public point checks, and the pairwise check Q == d*G.
        if not native.check_keypair(key):
            raise MalformedKeyError("SM2 private key is invalid (scalar out of range or mismatch)")
        public = native.load_spki(native.spki_der(key))
        if public is None:
            raise MalformedKeyError("cannot derive the SM2 public key")
        return Sm2PrivateKey(self, key, self._wrap_public(public))


class Sm2PublicKey(PublicKey):
    __slots__ = ("_alg", "_key")

    def __init__(self, alg: Sm2, key: native.Pkey, spki_der: bytes) -> None:
        super().__init__(spki_der)
        self._alg = alg
        self._key = key

    @property
    def algorithm(self) -> Sm2:
        return self._alg

    def verify(self, signature: bytes, data: bytes) -> None:
        parse_strict_der(signature, SM2_ORDER)
        md = native.digest_by_name("SM3")
        if not native.digest_verify(self._key, md, signature, data, self._alg.distinguishing_id):
            raise InvalidSignatureError("SM2 signature does not verify")


class Sm2PrivateKey(PrivateKey):
    __slots__ = ("_alg", "_key", "_public")

    def __init__(self, alg: Sm2, key: native.Pkey, public: Sm2PublicKey) -> None:
        self._alg = alg
        self._key = key
        self._public = public

    @property
    def algorithm(self) -> Sm2:
        return self._alg

    def public_key(self) -> Sm2PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        md = native.digest_by_name("SM3")
        return native.digest_sign(self._key, md, data, self._alg.distinguishing_id)

    def to_encrypted_pem(self, passphrase: bytes) -> bytes:
        if not passphrase:
            raise ValueError("a non-empty passphrase is required to export a private key")
        return native.encrypted_pkcs8_pem(self._key, passphrase)


SM2_SM3 = Sm2()

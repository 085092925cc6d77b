"""GOST R 34.10-2012 signatures with Streebog (GOST R 34.11-2012), via OpenSSL's gost engine.

Everything is the engine's format, so keys and signatures are interchangeable with
``openssl ... -engine gost``:

* SubjectPublicKeyInfo with id-tc26-gost3410-12-256 / -512 and the paramset (RFC 9215);
* signatures ``s || r``, each big-endian and as long as the curve order (32 or 64 bytes); the
  engine reads the Streebog digest as a little-endian integer (RFC 7091's alpha).

Default parameter sets, both the engine's ``paramset:A``:

* 256-bit: **CryptoPro-A** (id-GostR3410-2001-CryptoPro-A-ParamSet, 1.2.643.2.2.35.1). It is what
  ``openssl genpkey -engine gost -algorithm gost2012_256 -pkeyopt paramset:A`` produces, and the
  one set every GOST implementation (CryptoPro CSP, ViPNet, the Linux kernel, pygost, Go and
  Java libraries) accepts. TC26-256-A is a twisted-Edwards curve with cofactor 4 that older
  implementations reject; pass ``paramset="TCA"`` when a peer requires it.
* 512-bit: **TC26-512-A** (id-tc26-gost-3410-12-512-paramSetA, 1.2.643.7.1.2.1.2.1), the first
  and most widely supported 512-bit set.

Other sets: ``Gost.generate(paramset=...)`` takes the engine's names (256: A, B, C, XA, XB, TCA,
TCB, TCC, TCD; 512: A, B, C).

The engine draws the nonce k from OpenSSL's CSPRNG (the pure-Python gostcrypto hangs for k = 0;
that code path does not exist here). Private keys with d = 0 or d >= q are refused on load, and
verification refuses wrong lengths and r or s outside [1, q-1] before OpenSSL sees them.
"""

from __future__ import annotations

import stellakeys.crypto._libcrypto as native
from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.crypto._ecsig import check_scalars
from stellakeys.errors import (
    AlgorithmOptionError,
    InvalidSignatureError,
    MalformedKeyError,
    UnsupportedKeyError,
    WeakKeyError,
)

#: The engine's paramset names, by key size.
PARAMSETS: dict[int, tuple[str, ...]] = {
    256: ("A", "B", "C", "XA", "XB", "TCA", "TCB", "TCC", "TCD"),
    512: ("A", "B", "C"),
}

#: The curve OID a key generated on each paramset name reports (checked by the tests).
PARAMSET_OIDS: dict[int, dict[str, str]] = {
    256: {
        "A": "1.2.643.2.2.35.1",
        "B": "1.2.643.2.2.35.2",
        "C": "1.2.643.2.2.35.3",
        "XA": "1.2.643.2.2.36.0",
        "XB": "1.2.643.2.2.36.1",
        "TCA": "1.2.643.7.1.2.1.1.1",
        "TCB": "1.2.643.7.1.2.1.1.2",
        "TCC": "1.2.643.7.1.2.1.1.3",
        "TCD": "1.2.643.7.1.2.1.1.4",
    },
    512: {"A": "1.2.643.7.1.2.1.2.1", "B": "1.2.643.7.1.2.1.2.2", "C": "1.2.643.7.1.2.1.2.3"},
}


class Gost(Algorithm):
    def __init__(
        self,
        bits: int,
        oid: str,
        aliases: tuple[str, ...],
        default_paramset: str,
    ) -> None:
        self.id = f"gost-r-34.10-2012-{bits}"
        self.aliases = aliases
        self.spki_oid = oid
        self.bits = bits
        self.size = bits // 8
        self.digest_name = f"md_gost12_{bits}"
        self.default_paramset = default_paramset
        #: Set by ``with_options(paramset=...)``: loaded keys must be on this paramset.
        self.required_paramset: str | None = None
        self.display_name = f"GOST R 34.10-2012 {bits}-bit with Streebog-{bits}"

    options = ("paramset",)

    def _with_options(self, given: dict[str, object]) -> Gost:
        chosen = given["paramset"]
        if not isinstance(chosen, str) or chosen not in PARAMSETS[self.bits]:
            raise AlgorithmOptionError(
                f"unknown paramset {chosen!r} for {self.id}; "
                f"choose one of {', '.join(PARAMSETS[self.bits])}"
            )
        configured = Gost(self.bits, self.spki_oid, self.aliases, chosen)
        configured.required_paramset = chosen
        return configured

    def __repr__(self) -> str:
        if self.required_paramset is None:
            return f"<Algorithm {self.id}>"
        return f"<Algorithm {self.id} paramset={self.required_paramset}>"

    def _nid(self) -> int:
        native.ensure_gost_engine()
        nid = native.nid_of_oid(self.spki_oid)
        if nid == 0:
            raise native.OpenSSLError(f"OpenSSL does not know {self.spki_oid}")
        return nid

    # -- keys --

    def generate(self, paramset: str | None = None) -> PrivateKey:
        """A new key on ``paramset`` (the engine's name; default: see the module docs)."""
        chosen = self.default_paramset if paramset is None else paramset
        if chosen not in PARAMSETS[self.bits]:
            raise ValueError(
                f"unknown paramset {chosen!r} for {self.id}; "
                f"choose one of {', '.join(PARAMSETS[self.bits])}"
            )
        key = native.generate_by_nid(self._nid(), {"paramset": chosen})
        return self.wrap_private(key)

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        nid = self._nid()  # the engine must be registered before OpenSSL can parse the key
        key = native.load_spki(spki_der)
        if key is None:
            raise MalformedKeyError(f"cannot parse {self.id} public key")
        if key.type_id != nid:
            raise UnsupportedKeyError(f"public key is not a {self.id} key")
        return self._wrap_public(key)

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        from stellakeys.crypto._native_pem import decode_native_private_pem

        return self.wrap_private(decode_native_private_pem(pem, passphrase))

    def _wrap_public(self, key: native.Pkey) -> GostPublicKey:
        # The engine checks the point is on the curve while decoding; EC_KEY_check_key adds
        # "not infinity" and "in the subgroup of order q" (two of the curves have cofactor 4).
        if not native.ec_check_key(key):
            raise WeakKeyError(f"{self.id} public key is not a valid curve point")
        order, curve = native.ec_order_and_curve(key)
        if order.bit_length() > self.bits:
            raise UnsupportedKeyError(f"curve order does not fit {self.id}")
        spki = native.spki_der(key)
        curve_oid = native.oid_of_nid(curve)
        if self.required_paramset is not None:
            expected = PARAMSET_OIDS[self.bits][self.required_paramset]
            if curve_oid != expected:
                raise UnsupportedKeyError(
                    f"{self.id} key is on paramset {curve_oid}, not {self.required_paramset}"
                )
        return GostPublicKey(self, key, spki, order, curve_oid)

    def wrap_private(self, key: native.Pkey) -> GostPrivateKey:
        """Validate a GOST EVP_PKEY and wrap it; refuses d = 0, d >= q and Q != d*G."""
        if key.type_id != self._nid():
            raise UnsupportedKeyError(f"private key is not a {self.id} key")
        # The engine stores d as read (it does not reduce it modulo q) and signs with it, so an
        # out-of-range scalar must be refused here. Compared inside OpenSSL: d never becomes
        # a Python int.
        if not native.ec_private_in_range(key):
            raise MalformedKeyError(f"{self.id} private key scalar is outside [1, q-1]")
        if not native.ec_check_key(key):
            raise MalformedKeyError(f"{self.id} private key does not match its public key")
        public = native.load_spki(native.spki_der(key))
        if public is None:
            raise MalformedKeyError(f"cannot derive the {self.id} public key")
        return GostPrivateKey(self, key, self._wrap_public(public))


class GostPublicKey(PublicKey):
    __slots__ = ("_alg", "_key", "_order", "_paramset_oid")

    def __init__(
        self, alg: Gost, key: native.Pkey, spki_der: bytes, order: int, paramset_oid: str
    ) -> None:
        super().__init__(spki_der)
        self._alg = alg
        self._key = key
        self._order = order
        self._paramset_oid = paramset_oid

    @property
    def algorithm(self) -> Gost:
        return self._alg

    @property
    def paramset_oid(self) -> str:
        """The curve (parameter set) of this key, e.g. 1.2.643.2.2.35.1 for CryptoPro-A."""
        return self._paramset_oid

    def verify(self, signature: bytes, data: bytes) -> None:
        size = self._alg.size
        if len(signature) != 2 * size:
            raise InvalidSignatureError(f"{self._alg.id} signature must be {2 * size} bytes")
        # The engine's layout is s || r, each big-endian (pinned by the RFC 7091 known-answer
        # test in tests/test_sm2_gost.py). Range-check before OpenSSL: the rule is ours.
        s = int.from_bytes(signature[:size], "big")
        r = int.from_bytes(signature[size:], "big")
        check_scalars(r, s, self._order)
        md = native.digest_by_name(self._alg.digest_name)
        if not native.digest_verify(self._key, md, signature, data):
            raise InvalidSignatureError(f"{self._alg.id} signature does not verify")


class GostPrivateKey(PrivateKey):
    __slots__ = ("_alg", "_key", "_public")

    def __init__(self, alg: Gost, key: native.Pkey, public: GostPublicKey) -> None:
        self._alg = alg
        self._key = key
        self._public = public

    @property
    def algorithm(self) -> Gost:
        return self._alg

    def public_key(self) -> GostPublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        md = native.digest_by_name(self._alg.digest_name)
        return native.digest_sign(self._key, md, data)

    def to_encrypted_pem(self, passphrase: bytes) -> bytes:
        if not passphrase:
            raise ValueError("a non-empty passphrase is required to export a private key")
        return native.encrypted_pkcs8_pem(self._key, passphrase)


GOST_256 = Gost(
    256,
    "1.2.643.7.1.1.1.1",
    ("GOST-R-34.10-2012", "GOST-R-34.10-2012-256", "gost2012_256"),
    default_paramset="A",
)
GOST_512 = Gost(
    512,
    "1.2.643.7.1.1.1.2",
    ("GOST-R-34.10-2012-512", "gost2012_512"),
    default_paramset="A",
)

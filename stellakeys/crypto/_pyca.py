"""Algorithms backed by the ``cryptography`` package: the shared parts and Ed25519.

ECDSA (``_pyca_ec``) and ML-DSA (``_pyca_mldsa``) live in their own modules, imported by the
registry when one of their algorithms is first asked for, so that verifying an Ed25519 proof
loads only what Ed25519 needs (issue 20: CLI start-up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives._serialization import Encoding, PrivateFormat, PublicFormat
from cryptography.hazmat.primitives.asymmetric import ed25519

from stellakeys.crypto._base import Algorithm, PrivateKey, PublicKey
from stellakeys.crypto._edwards import check_public_key as check_ed25519_point
from stellakeys.errors import InvalidSignatureError, MalformedKeyError, UnsupportedKeyError

_PEM = Encoding.PEM
_DER = Encoding.DER
_RAW = Encoding.Raw
_SPKI = PublicFormat.SubjectPublicKeyInfo
_PKCS8 = PrivateFormat.PKCS8


def _der_public_key_loader() -> Any:
    """``cryptography``'s ``serialization.load_der_public_key``, the very same function.

    The public package ``cryptography.hazmat.primitives.serialization`` also imports the SSH
    key and certificate code (ciphers, RSA, DSA), a large share of a plain verification's
    start-up (issue 20); the function it re-exports lives in the Rust bindings, which Ed25519
    loads anyway. ``tests/test_algorithms.py`` checks that both names are one object, so an
    upgrade that moves it falls back here rather than changing behaviour.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return rust_openssl.keys.load_der_public_key
    except (ImportError, AttributeError):  # pragma: no cover - another cryptography layout
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        return load_der_public_key


load_der_public_key = _der_public_key_loader()


def load_public(der: bytes, expected: type[Any] | tuple[type[Any], ...]) -> Any:
    try:
        key = load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedKeyError(f"cannot parse public key: {exc}") from None
    if not isinstance(key, expected):
        raise UnsupportedKeyError(f"public key is a {type(key).__name__}")
    return key


class NotPycaKeyError(UnsupportedKeyError):
    """The key type is one ``cryptography`` does not handle (SM2, GOST): try the native backend."""


def decode_private(pem: bytes, passphrase: bytes | None) -> Any:
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key(pem, passphrase)
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


def load_private(pem: bytes, passphrase: bytes | None, expected: type[Any]) -> Any:
    key = decode_private(pem, passphrase)
    if not isinstance(key, expected):
        raise UnsupportedKeyError(f"private key is a {type(key).__name__}")
    return key


def _encrypted_pem(key: Any, passphrase: bytes) -> bytes:
    if not passphrase:
        raise ValueError("a non-empty passphrase is required to export a private key")
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption

    pem: bytes = key.private_bytes(_PEM, _PKCS8, BestAvailableEncryption(passphrase))
    return pem


class PycaPublicKey(PublicKey):
    __slots__ = ("_alg", "_key")

    def __init__(self, alg: Algorithm, key: Any) -> None:
        super().__init__(key.public_bytes(_DER, _SPKI))
        self._alg = alg
        self._key = key

    @property
    def algorithm(self) -> Algorithm:
        return self._alg


class PycaPrivateKey(PrivateKey):
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


def _sodium_verifier() -> Callable[[bytes, bytes, bytes], bool]:
    """libsodium's Ed25519 check (PyNaCl), about twice as fast as OpenSSL's on x86-64 (issue
    20; benchmarks/README.md), as ``check(signature, data, raw_public_key) -> accepted``.

    libsodium accepts a subset of what OpenSSL accepts: both require S < L and compare the
    encoding of [S]B - [k]A with R byte for byte; libsodium also refuses a small-order R, and a
    small-order or non-canonical A (which key loading refuses anyway). So an acceptance by
    libsodium is an acceptance by OpenSSL, and only a refusal is asked again of OpenSSL: the
    verdicts stay exactly OpenSSL's (tests/test_ed25519_sodium.py checks both directions on
    edge cases and mutated signatures). Without PyNaCl every check goes to OpenSSL.
    """
    try:
        from nacl.bindings import crypto_sign_open
        from nacl.exceptions import BadSignatureError
    except ImportError:  # pragma: no cover - PyNaCl is a dependency; kept for vendored installs
        return lambda signature, data, raw: False

    def check(signature: bytes, data: bytes, raw: bytes) -> bool:
        try:
            crypto_sign_open(signature + data, raw)
        except BadSignatureError:
            return False
        return True

    return check


#: Ed25519 verifications a process does with OpenSSL alone before it loads libsodium.
#: Importing PyNaCl's bindings takes 5-8 ms, what about 100 OpenSSL verifications cost; a
#: one-proof ``stellaops verify`` would pay that for nothing, while a batch, a service or
#: ``anchor status`` gets the faster check from the 101st verification on.
SODIUM_AFTER = 100
#: Messages (PAE bytes) of this size and more go to OpenSSL alone. From there on OpenSSL's
#: faster SHA-512 makes up for its slower curve arithmetic (16 KiB: 84 vs 122 µs, 32 KiB:
#: 114 vs 142, 64 KiB: equal), and PyNaCl's ``crypto_sign_open`` copies signature and message
#: into one new buffer and allocates an output buffer as large: at 90 KB that took fresh pages
#: from the allocator in some processes, +250 µs a verification (benchmarks/README.md).
SODIUM_MAX_MESSAGE = 32 * 1024
_openssl_only = 0
_sodium_check: Callable[[bytes, bytes, bytes], bool] | None = None


class _Ed25519PublicKey(PycaPublicKey):
    __slots__ = ("_raw",)

    def __init__(self, alg: Algorithm, key: Any) -> None:
        super().__init__(alg, key)
        self._raw: bytes = key.public_bytes(_RAW, PublicFormat.Raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        global _openssl_only, _sodium_check
        if len(signature) != 64:
            raise InvalidSignatureError("Ed25519 signature must be 64 bytes")
        check = _sodium_check
        if check is None:
            # Racing threads may both count or both load: harmless, the result is the same.
            _openssl_only += 1
            if _openssl_only > SODIUM_AFTER:
                check = _sodium_check = _sodium_verifier()
        if (
            check is not None
            and len(data) < SODIUM_MAX_MESSAGE
            and check(signature, data, self._raw)
        ):
            return
        try:
            self._key.verify(signature, data)  # the authority on every refusal (see above)
        except InvalidSignature:
            raise InvalidSignatureError("Ed25519 signature does not verify") from None


class _Ed25519PrivateKey(PycaPrivateKey):
    __slots__ = ()

    def sign(self, data: bytes) -> bytes:
        sig: bytes = self._key.sign(data)
        return sig


class Ed25519(Algorithm):
    id = "ed25519"
    aliases = ("SHA256-ED25519", "EdDSA", "Ed25519")
    spki_oid = "1.3.101.112"
    display_name = "Ed25519 (RFC 8032)"

    def wrap(self, key: ed25519.Ed25519PrivateKey) -> PrivateKey:
        return _Ed25519PrivateKey(self, key, _Ed25519PublicKey(self, key.public_key()))

    def generate(self) -> PrivateKey:
        return self.wrap(ed25519.Ed25519PrivateKey.generate())

    def from_seed(self, seed: bytes) -> PrivateKey:
        """The key of an RFC 8032 32-byte seed (known-answer tests, deterministic fixtures)."""
        return self.wrap(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        key = load_public(spki_der, ed25519.Ed25519PublicKey)
        # OpenSSL takes any 32 bytes; refuse the points that make forgery trivial or give one
        # key two encodings (stellakeys/crypto/_edwards.py). Every import path ends here.
        check_ed25519_point(key.public_bytes(_RAW, PublicFormat.Raw))
        return _Ed25519PublicKey(self, key)

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        return self.wrap(load_private(pem, passphrase, ed25519.Ed25519PrivateKey))


ED25519 = Ed25519()

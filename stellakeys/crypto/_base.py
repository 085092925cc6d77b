"""The three abstractions every algorithm backend implements: Algorithm, PublicKey, PrivateKey.

Backends differ (the ``cryptography`` package for Ed25519, ECDSA and ML-DSA; the system
libcrypto for SM2 and GOST), but callers only ever see these types. Keys are identified by the
fingerprint of their DER SubjectPublicKeyInfo, which is what trust anchors and thresholds count.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
from typing import ClassVar

from stellakeys.errors import AlgorithmOptionError, InvalidSignatureError, MalformedKeyError

FINGERPRINT_PREFIX = "SHA256:"


def fingerprint_of_spki(spki_der: bytes) -> str:
    """``SHA256:<hex>`` over the DER SubjectPublicKeyInfo."""
    return FINGERPRINT_PREFIX + hashlib.sha256(spki_der).hexdigest()


def pem_from_der(der: bytes, label: str) -> str:
    import base64

    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def der_from_pem(pem: str | bytes, label: str) -> bytes:
    """Decode exactly one PEM block with the given label; anything else is malformed."""
    import base64
    import binascii

    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise MalformedKeyError(f"not a PEM {label.lower()}: missing '{begin}' block")
    body = "".join(text[start + len(begin) : stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedKeyError(f"PEM {label.lower()} has invalid base64") from exc


class Algorithm(abc.ABC):
    """A signature algorithm: key type, parameters and hash, under one canonical id."""

    id: str
    aliases: tuple[str, ...] = ()
    #: SubjectPublicKeyInfo algorithm OID, and the parameter OID where the algorithm has one
    #: (the named curve for EC keys, the paramset for GOST).
    spki_oid: str
    #: The parameter OID that must accompany ``spki_oid`` (the named curve of an EC key), or
    #: None when the algorithm OID alone decides (Ed25519, ML-DSA, GOST with any paramset).
    spki_parameter_oid: str | None = None
    #: Deprecated algorithms still verify but trigger rotation warnings.
    deprecated: bool = False
    #: Human name for tables and docs.
    display_name: str = ""

    #: The options this algorithm takes, as keyword arguments of :meth:`with_options`,
    #: ``get_algorithm`` and the key loaders: ``distinguishing_id`` (SM2: the user ID hashed
    #: into every signature) and ``paramset`` (GOST: the curve new keys are generated on, and
    #: the curve a loaded key must be on). Every other algorithm has none.
    options: ClassVar[tuple[str, ...]] = ()

    def with_options(
        self, *, distinguishing_id: bytes | str | None = None, paramset: str | None = None
    ) -> Algorithm:
        """This algorithm with the given options (None means "not given").

        ``distinguishing_id``: SM2 only; bytes, or text encoded as UTF-8.
        ``paramset``: GOST only; the gost engine's name (256-bit: A, B, C, XA, XB, TCA, TCB,
        TCC, TCD; 512-bit: A, B, C).

        Raises AlgorithmOptionError for an option this algorithm does not have or a value it
        does not accept. With no option given, returns ``self``.
        """
        given: dict[str, object] = {
            name: value
            for name, value in (("distinguishing_id", distinguishing_id), ("paramset", paramset))
            if value is not None
        }
        unsupported = sorted(set(given) - set(self.options))
        if unsupported:
            has = ", ".join(self.options) if self.options else "no options"
            raise AlgorithmOptionError(
                f"{self.id} has no option {', '.join(unsupported)} (it takes {has})"
            )
        return self._with_options(given) if given else self

    def _with_options(self, given: dict[str, object]) -> Algorithm:
        """Subclasses with :attr:`options` return their configured copy here."""
        return self

    @abc.abstractmethod
    def generate(self) -> PrivateKey:
        """A new private key from the backend's CSPRNG."""

    @abc.abstractmethod
    def load_public_der(self, spki_der: bytes) -> PublicKey:
        """A public key from DER SubjectPublicKeyInfo already known to be of this algorithm."""

    @abc.abstractmethod
    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        """A private key from (encrypted) PKCS#8 PEM already known to be of this algorithm."""

    def __repr__(self) -> str:
        return f"<Algorithm {self.id}>"


class PublicKey(abc.ABC):
    """A verification key. Equal keys have equal DER SubjectPublicKeyInfo."""

    __slots__ = ("_fingerprint", "_spki_der")

    def __init__(self, spki_der: bytes) -> None:
        self._spki_der = spki_der
        self._fingerprint = fingerprint_of_spki(spki_der)

    @property
    @abc.abstractmethod
    def algorithm(self) -> Algorithm: ...

    @abc.abstractmethod
    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if ``signature`` is valid over ``data``; raise InvalidSignatureError if not."""

    def is_valid(self, signature: bytes, data: bytes) -> bool:
        try:
            self.verify(signature, data)
        except InvalidSignatureError:
            return False
        return True

    @property
    def spki_der(self) -> bytes:
        return self._spki_der

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def to_pem(self) -> str:
        return pem_from_der(self._spki_der, "PUBLIC KEY")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return hmac.compare_digest(self._spki_der, other._spki_der)

    def __hash__(self) -> int:
        return hash(self._spki_der)

    def __repr__(self) -> str:
        return f"<PublicKey {self.algorithm.id} {self._fingerprint}>"


class PrivateKey(abc.ABC):
    """A signing key. Its repr, str and pickling never reveal the secret."""

    __slots__ = ()
    _no_pickle: ClassVar[str] = "private keys cannot be pickled; export them encrypted instead"

    @property
    @abc.abstractmethod
    def algorithm(self) -> Algorithm: ...

    @abc.abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (the message, not a digest) in the algorithm's wire format."""

    @abc.abstractmethod
    def public_key(self) -> PublicKey: ...

    @abc.abstractmethod
    def to_encrypted_pem(self, passphrase: bytes) -> bytes:
        """Encrypted PKCS#8 PEM. There is deliberately no unencrypted export."""

    @property
    def fingerprint(self) -> str:
        return self.public_key().fingerprint

    def __repr__(self) -> str:
        return f"<PrivateKey {self.algorithm.id} {self.fingerprint}>"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError(self._no_pickle)

"""DSSE envelopes (https://github.com/secure-systems-lab/dsse): PAE, JSON, sign, threshold verify.

Envelopes are immutable values. Verification never returns a bare bool: it says which keys
verified, which signatures failed and why, and how many keys are still missing for the
threshold. A threshold counts distinct keys by fingerprint, so one key that signed twice (or
one key listed under two keyids) counts once.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

import stellakeys.strict_json as strict_json
from stellakeys.crypto import PublicKey
from stellakeys.errors import (
    DuplicateEnvelopeMemberError,
    DuplicateMemberError,
    MalformedEnvelopeError,
)

__all__ = [
    "Envelope",
    "EnvelopeVerification",
    "Signature",
    "SignatureFailure",
    "Signer",
    "VerifiedKey",
    "b64decode",
    "pae",
    "sign_envelope",
    "verify_envelope",
]


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``.

    Lengths are byte lengths of the UTF-8 encoding, in ASCII decimal, per the DSSE spec.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64decode(text: str) -> bytes:
    """Strict base64: standard or URL-safe alphabet (not mixed), padding optional."""
    try:
        raw = text.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise MalformedEnvelopeError("base64 field is not an ASCII string") from None
    remainder = len(raw) % 4
    if remainder:
        if remainder == 1 or raw.endswith(b"="):
            raise MalformedEnvelopeError("base64 has an impossible length")
        raw += b"=" * (4 - remainder)
    try:
        # The standard alphabet first: it is what stellakeys and most producers write, and
        # validation refuses '-' and '_', so URL-safe input always takes the second path.
        return _decode_standard(raw)
    except binascii.Error:
        pass
    if b"-" not in raw and b"_" not in raw:
        raise MalformedEnvelopeError("invalid base64")
    if b"+" in raw or b"/" in raw:
        raise MalformedEnvelopeError("base64 mixes the standard and URL-safe alphabets")
    try:
        return _decode_standard(raw.translate(_URLSAFE_TO_STANDARD))
    except binascii.Error:
        raise MalformedEnvelopeError("invalid base64") from None


def _decode_standard_binascii(raw: bytes) -> bytes:
    return binascii.a2b_base64(raw, strict_mode=True)


def _decode_standard_simd(raw: bytes) -> bytes:
    return _pybase64.b64decode(raw, validate=True)


# Payloads are the bulk of an envelope: pybase64's SIMD codec decodes 64 KiB ~40x faster
# than binascii (benchmarks/README.md), with the same strictness (alphabet, padding,
# length; tests/test_dsse_base64.py checks the two agree on every input). binascii remains
# the fallback where the wheel is missing.
try:
    import pybase64 as _pybase64
except ImportError:  # pragma: no cover - pybase64 is a dependency; kept for odd platforms
    _decode_standard = _decode_standard_binascii

    def b64encode(data: bytes) -> str:
        return binascii.b2a_base64(data, newline=False).decode("ascii")

else:
    _decode_standard = _decode_standard_simd

    def b64encode(data: bytes) -> str:
        return _pybase64.b64encode(data).decode("ascii")


@attrs.frozen
class Signature:
    """One signature of an envelope. ``keyid`` is a hint for finding the key, nothing more."""

    sig: bytes
    keyid: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"sig": b64encode(self.sig)}
        if self.keyid is not None:
            out["keyid"] = self.keyid
        return out


@attrs.frozen
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = ()

    PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def to_json(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, standard base64. Digests are over this."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        """Content address of the envelope: ``sha256:<hex>`` of :meth:`to_json`."""
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    def with_signatures(self, *signatures: Signature) -> Envelope:
        return attrs.evolve(self, signatures=self.signatures + signatures)

    @classmethod
    def from_json(cls, data: str | bytes) -> Envelope:
        try:
            # Strict JSON (docs/decisions/0014): UTF-8 only (RFC 8259 8.1), no duplicate
            # member (a peer might take the other "payload"), no lone surrogate (payloadType
            # must encode to UTF-8 for PAE).
            obj = strict_json.loads(data, document="envelope", error=DuplicateEnvelopeMemberError)
        except DuplicateMemberError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEnvelopeError(f"envelope is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedEnvelopeError("envelope JSON is nested too deeply") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: object) -> Envelope:
        if not isinstance(obj, dict):
            raise MalformedEnvelopeError("envelope must be a JSON object")
        payload_type = obj.get("payloadType")
        payload = obj.get("payload")
        signatures = obj.get("signatures")
        if not isinstance(payload_type, str):
            raise MalformedEnvelopeError("envelope.payloadType must be a string")
        if not isinstance(payload, str):
            raise MalformedEnvelopeError("envelope.payload must be a base64 string")
        if not isinstance(signatures, list):
            raise MalformedEnvelopeError("envelope.signatures must be a list")
        sigs: list[Signature] = []
        for n, entry in enumerate(signatures):
            if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
                raise MalformedEnvelopeError("each signature needs a base64 'sig' string")
            keyid = entry.get("keyid")
            if keyid is not None and not isinstance(keyid, str):
                raise MalformedEnvelopeError("signature keyid must be a string")
            # An empty keyid is how some producers (securesystemslib) write "no hint".
            sigs.append(Signature(_field(entry["sig"], f"signatures[{n}].sig"), keyid or None))
        return cls(payload_type, _field(payload, "payload"), tuple(sigs))


def _field(text: str, where: str) -> bytes:
    """b64decode, with the envelope field named (issue 17: "invalid base64" alone says not
    which of the fields is wrong)."""
    try:
        return b64decode(text)
    except MalformedEnvelopeError as exc:
        raise MalformedEnvelopeError(f"envelope.{where}: {exc}") from None


class Signer(Protocol):
    """Anything that signs bytes and knows its public key: a PrivateKey or a key-store handle."""

    def sign(self, data: bytes, /) -> bytes: ...

    def public_key(self) -> PublicKey: ...


def sign_envelope(
    payload_type: str,
    payload: bytes,
    signers: Sequence[Signer],
    keyids: Sequence[str | None] | None = None,
) -> Envelope:
    """An envelope signed by every signer (of any mix of algorithms), in order.

    Every signature carries a ``keyid`` (docs/decisions/0022): the one given in ``keyids``
    (``KeyManager.sign`` and the CLI give the key id ``stellaops key list`` shows), else the
    signer's public-key fingerprint ``SHA256:<hex of the DER SubjectPublicKeyInfo>``. Verifiers
    that match signatures to keys by keyid (securesystemslib, in-toto) need one; our own
    verification never trusts it (see :func:`verify_envelope`).
    """
    if not signers:
        raise ValueError("at least one signer is required")
    if keyids is not None and len(keyids) != len(signers):
        raise ValueError("keyids must match signers one to one")
    message = pae(payload_type, payload)
    hints = keyids if keyids is not None else [None] * len(signers)
    sigs = tuple(
        Signature(s.sign(message), k or s.public_key().fingerprint)
        for s, k in zip(signers, hints, strict=True)
    )
    return Envelope(payload_type, payload, sigs)


@attrs.frozen
class VerifiedKey:
    """A distinct key that produced a valid signature."""

    key_id: str
    fingerprint: str
    algorithm: str
    signature_index: int


@attrs.frozen
class SignatureFailure:
    signature_index: int
    keyid_hint: str | None
    reason: str


@attrs.frozen
class EnvelopeVerification:
    threshold: int
    verified: tuple[VerifiedKey, ...]
    failures: tuple[SignatureFailure, ...]

    @property
    def ok(self) -> bool:
        return len(self.verified) >= self.threshold

    @property
    def missing(self) -> int:
        """How many more distinct keys must sign before the threshold is met."""
        return max(0, self.threshold - len(self.verified))


def _as_keyring(keys: Mapping[str, PublicKey] | Iterable[PublicKey]) -> Mapping[str, PublicKey]:
    if isinstance(keys, dict):  # the common case, read as is (never modified)
        return keys
    if isinstance(keys, Mapping):
        return dict(keys)
    return {k.fingerprint: k for k in keys}


def _find_key(
    signature: Signature, message: bytes, keyring: Mapping[str, PublicKey]
) -> tuple[str, PublicKey] | None:
    """The trusted key that verifies ``signature``: the hinted key first, then every other."""
    hinted = keyring.get(signature.keyid) if signature.keyid is not None else None
    if hinted is not None and hinted.is_valid(signature.sig, message):
        return signature.keyid, hinted  # type: ignore[return-value]
    for key_id, key in keyring.items():
        if key is not hinted and key.is_valid(signature.sig, message):
            return key_id, key
    return None


def verify_envelope(
    envelope: Envelope,
    keys: Mapping[str, PublicKey] | Iterable[PublicKey],
    threshold: int = 1,
) -> EnvelopeVerification:
    """Check the envelope's signatures against trusted keys (keyid -> key, or bare keys).

    A keyid hint that names a trusted key is tried first; when it names none, or that key does
    not verify, every other trusted key is tried, because the hint is not authenticated.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    keyring = _as_keyring(keys)
    message = envelope.pae()
    verified: dict[str, VerifiedKey] = {}
    failures: list[SignatureFailure] = []
    for index, signature in enumerate(envelope.signatures):
        hint = signature.keyid
        if not keyring:
            failures.append(SignatureFailure(index, hint, "no trusted keys"))
            continue
        found = _find_key(signature, message, keyring)
        if found is None:
            reason = (
                f"does not verify with trusted key {hint!r}"
                if hint in keyring and len(keyring) == 1
                else "does not verify with any trusted key"
            )
            failures.append(SignatureFailure(index, hint, reason))
            continue
        key_id, key = found
        if key.fingerprint in verified:
            failures.append(SignatureFailure(index, hint, f"duplicate signature by {key_id}"))
        else:
            verified[key.fingerprint] = VerifiedKey(
                key_id, key.fingerprint, key.algorithm.id, index
            )
    return EnvelopeVerification(threshold, tuple(verified.values()), tuple(failures))

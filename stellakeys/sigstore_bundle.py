"""Sigstore bundles (``application/vnd.dev.sigstore.bundle.v0.3+json``), both ways.

A bundle carries a DSSE envelope with its verification material. We write: the envelope, a
``publicKey.hint`` naming the signing key, and every RFC 3161 token stored for the proof
(``timestampVerificationData.rfc3161Timestamps``, each a DER TimeStampResp as the bundle
schema asks). No transparency-log entry: stellakeys proofs are checked against trust anchors,
not Rekor.

We read a bundle from any producer into ``(envelope, timestamps, hint)`` and verify it with
the ordinary verification: the tokens give trusted time exactly as stored tokens do, and the
anchors and policy decide. The hint, an X.509 certificate or tlog entries in the bundle select
and prove nothing by themselves (a bundle is attacker-supplied input; see docs/decisions/0022).

Pure apart from :func:`export_bundle` / :func:`verify_bundle`, which take a KeyManager.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

import stellakeys.strict_json as strict_json
from stellakeys.dsse import Envelope, b64decode
from stellakeys.errors import (
    DuplicateEnvelopeMemberError,
    DuplicateMemberError,
    MalformedEnvelopeError,
)

if TYPE_CHECKING:
    from stellakeys.manager import KeyManager
    from stellakeys.verification import VerificationResult

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "MalformedBundleError",
    "SigstoreBundle",
    "bundle_json",
    "export_bundle",
    "read_bundle",
    "to_bundle",
    "verify_bundle",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: Media types we read. 0.1 and 0.2 differ from 0.3 only in what they require of the tlog and
#: certificate material, which we never rely on.
_ACCEPTED_MEDIA_TYPES = frozenset(
    {
        BUNDLE_MEDIA_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)


class MalformedBundleError(MalformedEnvelopeError):
    """A Sigstore bundle we cannot read: not JSON, an unknown media type, no DSSE envelope."""


@attrs.frozen
class SigstoreBundle:
    envelope: Envelope
    #: The DER RFC 3161 timestamps, as the bundle carries them (TimeStampResp).
    timestamps: tuple[bytes, ...] = attrs.field(repr=False)
    #: ``publicKey.hint`` when present: informational only.
    key_hint: str | None = None
    media_type: str = BUNDLE_MEDIA_TYPE


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _as_response(token: bytes) -> bytes:
    """A stored token as a DER TimeStampResp (status granted). A stored TimeStampResp (its
    first element is a PKIStatusInfo SEQUENCE, a token's is an OID) is kept as it is."""
    from stellakeys.timestamp import parse_token

    parse_token(token)  # TimestampError for anything that is not a token or a granted reply
    # Both are SEQUENCEs; after the outer header, a reply starts with SEQUENCE (0x30), a
    # ContentInfo with an OBJECT IDENTIFIER (0x06).
    header = 2 + (token[1] & 0x7F if token[1] & 0x80 else 0)
    if token[header] == 0x30:
        return token
    granted = bytes([0x30, 3, 0x02, 1, 0])
    return bytes([0x30]) + _der_length(len(granted) + len(token)) + granted + token


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_bundle(
    envelope: Envelope, timestamps: Sequence[bytes] = (), key_hint: str | None = None
) -> dict[str, Any]:
    """The v0.3 bundle for ``envelope`` as a JSON-ready dict (protobuf JSON field names).

    ``key_hint`` defaults to the first signature's keyid. Sigstore verifiers accept exactly one
    signature, so an envelope with several is refused (MalformedBundleError).
    """
    if len(envelope.signatures) != 1:
        raise MalformedBundleError(
            f"a Sigstore bundle carries exactly one signature; this proof has "
            f"{len(envelope.signatures)} (verify multi-signature proofs with stellaops verify)"
        )
    hint = key_hint if key_hint is not None else envelope.signatures[0].keyid
    material: dict[str, Any] = {"publicKey": {"hint": hint or ""}, "tlogEntries": []}
    if timestamps:
        material["timestampVerificationData"] = {
            "rfc3161Timestamps": [
                {"signedTimestamp": _b64(_as_response(t))} for t in dict.fromkeys(timestamps)
            ]
        }
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": envelope.to_dict(),
    }


def _member(obj: dict[str, Any], *names: str) -> Any:
    """A member under its protobuf JSON name or its proto field name (both are valid JSON).

    Both at once is refused: readers disagree on which wins (the Sigstore protobuf-specs
    models take the proto name; protobuf's json_format takes the last one or refuses,
    depending on the order), so a hostile bundle could show another envelope or other
    timestamps to another verifier than to us (a parser differential)."""
    present = [name for name in dict.fromkeys(names) if name in obj]
    if len(present) > 1:
        raise MalformedBundleError(
            f"the Sigstore bundle gives one field twice, as {present[0]!r} and {present[1]!r}"
        )
    return obj[present[0]] if present else None


def _one_of(obj: dict[str, Any], what: str, *fields: tuple[str, str]) -> None:
    """At most one member of a protobuf ``oneof`` (each given by its JSON and proto names)."""
    given = [
        json_name
        for json_name, proto_name in fields
        if _member(obj, json_name, proto_name) is not None  # JSON null: not set (protobuf)
    ]
    if len(given) > 1:
        raise MalformedBundleError(
            f"the Sigstore bundle's {what} holds both {given[0]!r} and {given[1]!r}; the"
            " schema allows one"
        )


def read_bundle(data: str | bytes) -> SigstoreBundle:
    """Parse a bundle from any producer into envelope, timestamps and hint (unverified)."""
    try:
        obj = strict_json.loads(
            data, document="Sigstore bundle", error=DuplicateEnvelopeMemberError
        )
    except DuplicateMemberError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedBundleError(f"Sigstore bundle is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedBundleError("a Sigstore bundle must be a JSON object")
    media_type = _member(obj, "mediaType", "media_type")
    if media_type not in _ACCEPTED_MEDIA_TYPES:
        raise MalformedBundleError(
            f"unsupported Sigstore bundle mediaType {str(media_type)[:80]!r};"
            f" expected {BUNDLE_MEDIA_TYPE}"
        )
    _one_of(
        obj,
        "content",
        ("dsseEnvelope", "dsse_envelope"),
        ("messageSignature", "message_signature"),
    )
    dsse = _member(obj, "dsseEnvelope", "dsse_envelope")
    if dsse is None:
        raise MalformedBundleError(
            "the Sigstore bundle holds no dsseEnvelope (a messageSignature bundle signs a"
            " digest, not a DSSE proof)"
        )
    if isinstance(dsse, dict) and "payload_type" in dsse:
        # The proto name, alone (with both, _member refuses: each would sign another PAE).
        rest = {k: v for k, v in dsse.items() if k not in ("payloadType", "payload_type")}
        dsse = {**rest, "payloadType": _member(dsse, "payloadType", "payload_type")}
    envelope = Envelope.from_dict(dsse)
    material = _member(obj, "verificationMaterial", "verification_material") or {}
    if not isinstance(material, dict):
        raise MalformedBundleError("bundle verificationMaterial must be an object")
    _one_of(
        material,
        "verificationMaterial",
        ("publicKey", "public_key"),
        ("x509CertificateChain", "x509_certificate_chain"),
        ("certificate", "certificate"),
    )
    hint = None
    public_key = _member(material, "publicKey", "public_key")
    if isinstance(public_key, dict) and isinstance(public_key.get("hint"), str):
        hint = public_key["hint"] or None
    tokens: list[bytes] = []
    tvd = _member(material, "timestampVerificationData", "timestamp_verification_data") or {}
    entries = (
        _member(tvd, "rfc3161Timestamps", "rfc3161_timestamps") if isinstance(tvd, dict) else None
    )
    for entry in entries or []:
        signed = (
            _member(entry, "signedTimestamp", "signed_timestamp")
            if isinstance(entry, dict)
            else None
        )
        if not isinstance(signed, str):
            raise MalformedBundleError("each rfc3161Timestamps entry needs a signedTimestamp")
        tokens.append(b64decode(signed))
    return SigstoreBundle(envelope, tuple(tokens), hint, str(media_type))


def bundle_json(bundle: dict[str, Any]) -> bytes:
    """Stable JSON text for a bundle dict (two-space indent, a final newline)."""
    return (json.dumps(bundle, indent=2, sort_keys=False) + "\n").encode()


def export_bundle(manager: KeyManager, digest: str) -> dict[str, Any]:
    """The v0.3 bundle of a stored proof with every RFC 3161 token stored for it."""
    if not digest.startswith("sha256:"):
        return to_bundle(manager.get_proof(digest), ())  # raises NotFoundError: no such proof
    # One read: the envelope and its tokens come from the same stored record, so a token
    # added meanwhile cannot pair with a view taken before it.
    envelope, _, tokens = manager.proof_with_tokens(digest)
    return to_bundle(envelope, tokens)


def verify_bundle(manager: KeyManager, data: str | bytes, **options: Any) -> VerificationResult:
    """Verify a bundle from any producer: its envelope with :meth:`KeyManager.verify`, its
    timestamps as RFC 3161 tokens (trusted time when they verify against the TSA roots).
    ``options`` are KeyManager.verify's (purl, at, policy, timestamps, timestamp_verifier)."""
    bundle = read_bundle(data)
    extra = tuple(options.pop("timestamps", ()))
    return manager.verify(bundle.envelope, timestamps=(*bundle.timestamps, *extra), **options)

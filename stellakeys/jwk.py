"""An anchor's keys for verifiers that do not read our database: RFC 7517 JWKS and PEM.

Pure: the anchor and the time come in, a JSON-ready dict or PEM text goes out (no I/O, no
clock). The formats are described in docs/decisions/0022 and docs/interop.md:

- Ed25519 keys are RFC 8037 ``OKP`` JWKs (``alg`` ``EdDSA``); P-256 / P-384 keys are RFC 7518
  ``EC`` JWKs (``ES256`` / ``ES384``; note that JWS wants the raw ``r || s`` signature while
  DSSE envelopes from stellakeys carry the DER form).
- Algorithms with no registered JWK form (SM2, GOST, ML-DSA) go into the JWK Set's extension
  member ``x-stellakeys-spki-keys``, each with its DER SubjectPublicKeyInfo in base64. RFC 7517
  section 5 makes JOSE libraries ignore a member they do not understand, so the set still
  loads everywhere.
- Every key, in either list, carries ``x-stellakeys``: key id, our algorithm id, fingerprint,
  validity window and revocation state at the export time.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.crypto import PublicKey, load_public_key_pem
from stellakeys.times import format_time

__all__ = [
    "EXTENSION_MEMBER",
    "SPKI_KEYS_MEMBER",
    "anchor_jwks",
    "anchor_pem",
    "public_key_jwk",
    "trusted_entries",
]

#: Per-key extension member: what a JWK cannot say (key id, validity, revocation state).
EXTENSION_MEMBER = "x-stellakeys"
#: JWK Set extension member listing the keys that have no registered JWK form.
SPKI_KEYS_MEMBER = "x-stellakeys-spki-keys"

_EC_CURVES = {
    "ecdsa-p256-sha256": ("P-256", "ES256", 32),
    "ecdsa-p384-sha384": ("P-384", "ES384", 48),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_key_jwk(key: PublicKey) -> dict[str, str] | None:
    """The key's RFC 7517 JWK (no ``kid``), or None when its algorithm has no registered form."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    alg = key.algorithm.id
    if alg == "ed25519":
        loaded = serialization.load_der_public_key(key.spki_der)
        assert isinstance(loaded, ed25519.Ed25519PublicKey)
        raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "alg": "EdDSA", "use": "sig"}
    if alg in _EC_CURVES:
        crv, jws_alg, size = _EC_CURVES[alg]
        ec_key = serialization.load_der_public_key(key.spki_der)
        assert isinstance(ec_key, ec.EllipticCurvePublicKey)
        numbers = ec_key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
            "alg": jws_alg,
            "use": "sig",
        }
    return None


def trusted_entries(anchor: TrustAnchor, at: datetime) -> tuple[KeyHistoryEntry, ...]:
    """The anchor's currently trusted keys: added by ``at``, not revoked or expired at ``at``.

    A key whose revocation is scheduled after ``at`` is included, with its ``revokedAt``.
    """
    return anchor.keys_valid_at(at)


def _state(entry: KeyHistoryEntry, at: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {
        "keyId": entry.key_id,
        "algorithm": entry.algorithm,
        "fingerprint": entry.fingerprint,
        "notBefore": format_time(entry.added_at),
        "notAfter": format_time(entry.ends_at) if entry.ends_at is not None else None,
        "revocation": "none",
    }
    if entry.expires_at is not None:
        out["expiresAt"] = format_time(entry.expires_at)
    if entry.revoked_at is not None:
        out["revocation"] = "revoked" if entry.is_revoked_at(at) else "scheduled"
        out["revokedAt"] = format_time(entry.revoked_at)
        out["revokeReason"] = entry.revoke_reason
    return out


def anchor_jwks(anchor: TrustAnchor, at: datetime) -> dict[str, Any]:
    """The anchor's currently trusted keys (:func:`trusted_entries`) as an RFC 7517 JWK Set."""
    keys: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for entry in trusted_entries(anchor, at):
        public = load_public_key_pem(entry.public_key_pem)
        jwk = public_key_jwk(public)
        state = _state(entry, at)
        if jwk is None:
            spki = base64.b64encode(public.spki_der).decode("ascii")
            others.append({"kid": entry.key_id, "spki": spki, EXTENSION_MEMBER: state})
        else:
            keys.append({**jwk, "kid": entry.key_id, EXTENSION_MEMBER: state})
    return {
        "keys": keys,
        SPKI_KEYS_MEMBER: others,
        "x-stellakeys-anchor": {
            "trustAnchorId": str(anchor.anchor_id),
            "purlPattern": anchor.purl_pattern,
            "allowedPredicateTypes": list(anchor.allowed_predicate_types),
            "policyVersion": anchor.policy_version,
            "active": anchor.active,
            "exportedAt": format_time(at),
        },
    }


def anchor_pem(anchor: TrustAnchor, at: datetime) -> str:
    """The same keys as PEM SubjectPublicKeyInfo blocks, each after ``#`` comment lines with
    its id and state (RFC 7468 lets text stand between blocks; OpenSSL reads the first)."""
    blocks = [
        f"# trust anchor {anchor.anchor_id} ({anchor.purl_pattern}), exported {format_time(at)}\n"
    ]
    for entry in trusted_entries(anchor, at):
        state = _state(entry, at)
        lines = [f"# {name}: {value}" for name, value in state.items() if value is not None]
        public = load_public_key_pem(entry.public_key_pem)
        blocks.append("\n".join(lines) + "\n" + public.to_pem())
    return "".join(blocks)

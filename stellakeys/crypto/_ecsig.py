"""Strict parsing of (r, s) signatures, shared by ECDSA and SM2.

OpenSSL already rejects most malformed signatures, but "most" is not a property a verifier can
document. These checks make the rules explicit and backend-independent: canonical DER only,
no trailing bytes, and both scalars in [1, n-1].
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from stellakeys.errors import InvalidSignatureError


def parse_strict_der(signature: bytes, order: int) -> tuple[int, int]:
    """(r, s) from a DER ECDSA-Sig-Value that is canonical and in range, else raise."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError as exc:
        raise InvalidSignatureError("signature is not a DER (r, s) sequence") from exc
    if encode_dss_signature(r, s) != signature:
        raise InvalidSignatureError("signature DER is not canonical or has trailing bytes")
    check_scalars(r, s, order)
    return r, s


def check_scalars(r: int, s: int, order: int) -> None:
    if not (0 < r < order and 0 < s < order):
        raise InvalidSignatureError("signature scalar r or s is outside [1, n-1]")

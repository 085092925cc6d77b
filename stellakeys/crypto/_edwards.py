"""Ed25519 public-key validation: the checks OpenSSL does not make when it loads a key.

OpenSSL (and so ``cryptography``) accepts any 32 bytes as an Ed25519 public key. Three kinds are
dangerous (docs/decisions/0014):

* **small-order points** (the 8 points of order 1, 2, 4 or 8). With the identity point A = 0
  the verification equation ``[s]B = R + [k]A`` becomes ``[s]B = R``, so the signature
  ``R = identity, s = 0`` (bytes ``01 00 .. 00``) verifies *every* message; the other seven
  make a fixed signature verify a fixed share (1/2 .. 1/8) of all messages. Anyone could forge
  proofs for such a "key", and nobody holds its private half.
* **non-canonical encodings**: y >= p (19 values of y have a second encoding), or x = 0 with
  the sign bit set. One key then has two encodings, so two fingerprints, and RFC 8032 section
  5.1.3 says decoding must fail; some verifiers reduce, some refuse (a parser differential).
* **points with a torsion component** (not in the prime-order subgroup). No key made from a
  private scalar is one; verifiers that check ``[8][s]B = [8]R + [8][k]A`` (cofactored) and
  those that check without the 8 (OpenSSL) can disagree on signatures under such a key.

So a public key is accepted only if it decodes canonically to a point P with [L]P = 0 and
P != 0 (L the prime order), which implies none of the above. Pure Python on public data: no
secret is involved, so constant time does not matter; it runs once per key and process (the
keys of a verification are parsed once and cached), about a millisecond.
"""

from __future__ import annotations

import functools

from stellakeys.errors import WeakKeyError

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
#: The prime order of the base point (RFC 8032 section 5.1).
L = 2**252 + 27742317777372353535851937790883648493

# Extended homogeneous coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z.
_Point = tuple[int, int, int, int]
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(p: _Point, q: _Point) -> _Point:
    """RFC 8032 section 5.1.4 addition (complete for a = -1, so it also doubles)."""
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p: _Point) -> _Point:
    """dbl-2008-hwcd for a = -1: 4 squarings and 4 products instead of addition's 9."""
    a = p[0] * p[0] % _P
    b = p[1] * p[1] % _P
    c = 2 * p[2] * p[2] % _P
    h = -a - b  # curve a = -1: H = a*A - B
    e = (p[0] + p[1]) ** 2 + h  # (X + Y)^2 - A - B
    g = b - a  # G = a*A + B
    f = g - c
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(k: int, p: _Point) -> _Point:
    result = _IDENTITY
    for bit in bin(k)[2:]:
        result = _double(result)
        if bit == "1":
            result = _add(result, p)
    return result


def _is_identity(p: _Point) -> bool:
    # x = 0 and y = 1, projectively.
    return p[0] % _P == 0 and (p[1] - p[2]) % _P == 0


def decode_point(raw: bytes) -> tuple[int, int]:
    """RFC 8032 section 5.1.3 decoding, strict: the affine (x, y), or WeakKeyError."""
    if len(raw) != 32:
        raise WeakKeyError("Ed25519 public key must be 32 bytes")
    encoded = int.from_bytes(raw, "little")
    sign = encoded >> 255
    y = encoded & ((1 << 255) - 1)
    if y >= _P:
        raise WeakKeyError("Ed25519 public key is not canonical (y >= p)")
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P != u:
        if v * x * x % _P != -u % _P:
            raise WeakKeyError("Ed25519 public key is not a point of the curve")
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        raise WeakKeyError("Ed25519 public key is not canonical (x = 0 with the sign bit set)")
    if x & 1 != sign:
        x = _P - x
    return x, y


@functools.lru_cache(maxsize=1024)
def check_public_key(raw: bytes) -> None:
    """Refuse small-order, non-canonical, off-curve and mixed-order Ed25519 public keys."""
    x, y = decode_point(raw)
    point: _Point = (x, y, 1, x * y % _P)
    if _is_identity(_mul(8, point)):
        raise WeakKeyError(
            "Ed25519 public key is a small-order point (anyone can forge signatures for it)"
        )
    if not _is_identity(_mul(L, point)):
        raise WeakKeyError("Ed25519 public key is not in the prime-order subgroup")

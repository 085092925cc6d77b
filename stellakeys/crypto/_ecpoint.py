"""SEC 1 point checks for the NIST curves and SM2's, before OpenSSL sees the key.

OpenSSL already refuses the point at infinity, coordinates >= p and points off the curve when
it decodes a key, but "OpenSSL refuses it" is not a rule a verifier can document, and its
errors are one vague "Invalid key". These checks state the rules (docs/decisions/0014) and
name what is wrong. P-256, P-384 and the SM2 curve have cofactor 1, so every point on the
curve other than infinity generates the whole prime-order group: no small subgroup to check.

Public data only, so nothing here needs to run in constant time.
"""

from __future__ import annotations

from typing import NamedTuple

from stellakeys.errors import WeakKeyError


class ShortWeierstrass(NamedTuple):
    """y^2 = x^3 + a*x + b over GF(p), with p = 3 (mod 4) so square roots are one pow."""

    name: str
    p: int
    a: int
    b: int

    @property
    def size(self) -> int:
        return (self.p.bit_length() + 7) // 8

    def rhs(self, x: int) -> int:
        return (x * x * x + self.a * x + self.b) % self.p


P256_CURVE = ShortWeierstrass(
    "P-256",
    2**256 - 2**224 + 2**192 + 2**96 - 1,
    -3,
    0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
)
P384_CURVE = ShortWeierstrass(
    "P-384",
    2**384 - 2**128 - 2**96 + 2**32 - 1,
    -3,
    int(
        "B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8ED"
        "D3EC2AEF",
        16,
    ),
)


#: GB/T 32918.5 recommended curve (the point checks are the same as for the NIST curves).
SM2_CURVE = ShortWeierstrass(
    "SM2",
    0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
)


def check_sec1_point(encoded: bytes, curve: ShortWeierstrass) -> None:
    """Refuse infinity, hybrid form, wrong lengths, coordinates >= p and off-curve points."""
    size = curve.size
    what = f"{curve.name} public key"
    if not encoded:
        raise WeakKeyError(f"{what} is empty")
    if encoded == b"\x00":
        raise WeakKeyError(f"{what} is the point at infinity")
    form = encoded[:1]
    if form == b"\x04":
        if len(encoded) != 1 + 2 * size:
            raise WeakKeyError(f"{what} has the wrong length for an uncompressed point")
        x = int.from_bytes(encoded[1 : 1 + size], "big")
        y = int.from_bytes(encoded[1 + size :], "big")
        if x >= curve.p or y >= curve.p:
            raise WeakKeyError(f"{what} has a coordinate >= p (not a canonical encoding)")
        if y * y % curve.p != curve.rhs(x):
            raise WeakKeyError(f"{what} is not a point of the curve")
    elif form in (b"\x02", b"\x03"):
        if len(encoded) != 1 + size:
            raise WeakKeyError(f"{what} has the wrong length for a compressed point")
        x = int.from_bytes(encoded[1:], "big")
        if x >= curve.p:
            raise WeakKeyError(f"{what} has a coordinate >= p (not a canonical encoding)")
        rhs = curve.rhs(x)
        root = pow(rhs, (curve.p + 1) // 4, curve.p)
        if root * root % curve.p != rhs:
            raise WeakKeyError(f"{what} is not a point of the curve (x has no y)")
    else:
        # 0x06/0x07 is X9.62's "hybrid" form: a third encoding of the same point, written by
        # no producer we know; refusing it keeps one point to two encodings at most.
        raise WeakKeyError(
            f"{what} must be an uncompressed or compressed point (SEC 1 form 0x{form.hex()})"
        )

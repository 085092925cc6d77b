"""Weak public keys are refused on every import path, for every registered algorithm.

Known answers, crafted byte by byte (docs/decisions/0014):

* Ed25519: the 8 small-order points as the literature lists them (libsodium's blocklist, "Taming
  the many EdDSAs", Chalkias et al. 2020), the 19 + 19 encodings with y >= p, x = 0 with the sign
  bit set, an off-curve y, and an honest key plus a point of order 8 (not in the prime-order
  subgroup). The identity point is shown to be a real forgery: with it, the signature
  ``R = 01 00..00, s = 0`` verifies every message (checked against the backend directly).
* ECDSA P-256 / P-384: the point at infinity, a point off the curve, x + p (coordinate >= p),
  the X9.62 hybrid form, a truncated point; compressed points are accepted with the
  uncompressed key's fingerprint.
* SM2: infinity, off-curve, hybrid form. GOST R 34.10-2012: (0, 0), off-curve, and on the
  cofactor-4 curve TC26-256-A a point of small order and an honest key plus one (wrong
  subgroup). ML-DSA: one byte short, one byte long.

New names (WeakKeyError, DuplicateMemberError, ...) are looked up through the ``errors`` module
inside the tests, so that this file, run against main 9603a3d, fails test by test, showing what
each case did there, rather than failing to import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from test_sm2_gost import CRYPTOPRO_A, SM2_CURVE, Curve, check_curve, gost_spki, oid, tlv

from stellakeys import errors
from stellakeys.crypto import get_algorithm, load_public_key_der, load_public_key_pem
from stellakeys.crypto._base import pem_from_der
from stellakeys.dsse import Envelope, Signature
from stellakeys.errors import MalformedKeyError
from stellakeys.intoto import PAYLOAD_TYPE, Statement, Subject

# --- Ed25519 known answers ---------------------------------------------------------------------

P25519 = 2**255 - 19
D25519 = -121665 * pow(121666, -1, P25519) % P25519
L25519 = 2**252 + 27742317777372353535851937790883648493
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

#: The eight points of small order, canonically encoded: order 1, 2, 4, 4, 8, 8, 8, 8.
SMALL_ORDER = {
    "identity (order 1)": "0100000000000000000000000000000000000000000000000000000000000000",
    "order 2": "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "order 4, x even": "0000000000000000000000000000000000000000000000000000000000000000",
    "order 4, x odd": "0000000000000000000000000000000000000000000000000000000000000080",
    "order 8, a": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order 8, a neg": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "order 8, b": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order 8, b neg": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
}
IDENTITY = bytes.fromhex(SMALL_ORDER["identity (order 1)"])
#: R = identity, s = 0: under the identity key, [s]B = R + [k]A holds for every message.
IDENTITY_FORGERY = IDENTITY + bytes(32)
#: RFC 8032 section 7.1, TEST 1: an honest key must still load.
RFC8032_TEST1_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def ed25519_spki(raw: bytes) -> bytes:
    return ED25519_SPKI_PREFIX + raw


def ed25519_pem(raw: bytes) -> str:
    return pem_from_der(ed25519_spki(raw), "PUBLIC KEY")


def ed_decode(raw: bytes) -> tuple[int, int] | None:
    """Test-only RFC 8032 decoding (affine), None when y is not on the curve."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    xx = (y * y - 1) * pow(D25519 * y * y + 1, -1, P25519) % P25519
    x = pow(xx, (P25519 + 3) // 8, P25519)
    if x * x % P25519 != xx:
        x = x * pow(2, (P25519 - 1) // 4, P25519) % P25519
    if x * x % P25519 != xx:
        return None
    if x & 1 != sign:
        x = -x % P25519
    return x, y


def ed_add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    """Test-only affine twisted-Edwards addition (a = -1)."""
    (x1, y1), (x2, y2) = p1, p2
    t = D25519 * x1 * x2 * y1 * y2 % P25519
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, -1, P25519) % P25519
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, P25519) % P25519
    return x3, y3


def ed_encode(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def weak_key_error() -> type[Exception]:
    # Looked up at run time: main 9603a3d has no WeakKeyError, and must fail here, not on import.
    error: type[Exception] = errors.WeakKeyError  # type: ignore[attr-defined,unused-ignore]
    return error


def test_known_answers_are_what_they_claim() -> None:
    """The crafted constants: every small-order encoding decodes, and [8]P is the identity."""
    for raw_hex in SMALL_ORDER.values():
        point = ed_decode(bytes.fromhex(raw_hex))
        assert point is not None
        acc = point
        for _ in range(7):
            acc = ed_add(acc, point)
        assert acc == (0, 1)
    assert len(set(SMALL_ORDER.values())) == 8


def test_the_identity_key_is_a_universal_forgery_in_the_backend() -> None:
    """Why the check exists: OpenSSL itself accepts the identity key and the forged signature."""
    backend_key = ed25519.Ed25519PublicKey.from_public_bytes(IDENTITY)
    for message in (b"", b"any message", os.urandom(64)):
        backend_key.verify(IDENTITY_FORGERY, message)  # no exception: it verifies


@pytest.mark.parametrize("name", list(SMALL_ORDER))
def test_ed25519_small_order_points_are_refused(name: str) -> None:
    raw = bytes.fromhex(SMALL_ORDER[name])
    with pytest.raises(weak_key_error(), match="small-order"):
        load_public_key_der(ed25519_spki(raw))
    with pytest.raises(weak_key_error(), match="small-order"):
        load_public_key_pem(ed25519_pem(raw))
    with pytest.raises(weak_key_error()):
        get_algorithm("ed25519").load_public_der(ed25519_spki(raw))


def non_canonical_encodings() -> list[tuple[str, bytes]]:
    cases = []
    for delta in range(19):  # y = p .. p + 18 are the only y >= p that fit in 255 bits
        for sign in (0, 1):
            raw = ((P25519 + delta) | (sign << 255)).to_bytes(32, "little")
            cases.append((f"y=p+{delta},sign={sign}", raw))
    # x = 0 happens for y = 1 and y = -1; with the sign bit set the encoding is not canonical.
    cases.append(("identity with sign bit", (1 | (1 << 255)).to_bytes(32, "little")))
    cases.append(("order 2 with sign bit", ((P25519 - 1) | (1 << 255)).to_bytes(32, "little")))
    return cases


@pytest.mark.parametrize(
    ("name", "raw"), non_canonical_encodings(), ids=[n for n, _ in non_canonical_encodings()]
)
def test_ed25519_non_canonical_encodings_are_refused(name: str, raw: bytes) -> None:
    with pytest.raises(weak_key_error(), match="not canonical"):
        load_public_key_der(ed25519_spki(raw))


def test_ed25519_off_curve_and_mixed_order_points_are_refused() -> None:
    y = 2
    while ed_decode(y.to_bytes(32, "little")) is not None:
        y += 1
    with pytest.raises(weak_key_error(), match="not a point"):
        load_public_key_der(ed25519_spki(y.to_bytes(32, "little")))
    honest = get_algorithm("ed25519").generate().public_key().spki_der[-32:]
    honest_point = ed_decode(honest)
    torsion = ed_decode(bytes.fromhex(SMALL_ORDER["order 8, a"]))
    assert honest_point is not None and torsion is not None
    mixed = ed_encode(ed_add(honest_point, torsion))
    with pytest.raises(weak_key_error(), match="prime-order subgroup"):
        load_public_key_der(ed25519_spki(mixed))


def test_honest_ed25519_keys_still_load() -> None:
    raw = bytes.fromhex(RFC8032_TEST1_PUBLIC)
    assert load_public_key_der(ed25519_spki(raw)).spki_der == ed25519_spki(raw)
    for _ in range(20):
        public = get_algorithm("ed25519").generate().public_key()
        assert load_public_key_pem(public.to_pem()) == public


def test_ed25519_raw_import_path_as_pkcs11_uses_it_is_refused() -> None:
    """PKCS#11 hands over a raw CKA_EC_POINT; the adapter wraps it in an SPKI exactly so."""
    spki = ed25519.Ed25519PublicKey.from_public_bytes(IDENTITY).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(weak_key_error()):
        get_algorithm("ed25519").load_public_der(spki)


# --- the attack end to end, through the library and the CLI -----------------------------------

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PURL = "pkg:npm/victim@1.0.0"


def forged_proof() -> bytes:
    """Any statement at all, "signed" with the forgery: no private key is involved."""
    payload = Statement((Subject(PURL, {"sha256": "ab" * 32}),), "evidence.stella/v1").to_json()
    return Envelope(PAYLOAD_TYPE, payload, (Signature(IDENTITY_FORGERY, "attacker"),)).to_json()


def test_identity_key_import_is_refused_so_forged_proofs_cannot_verify() -> None:
    from stellakeys import FrozenClock, KeyManager
    from stellakeys.storage.memory import MemoryStore

    km = KeyManager(MemoryStore(), clock=FrozenClock(NOW), actor="tester")
    try:
        km.import_key("attacker", ed25519_pem(IDENTITY))
    except MalformedKeyError as exc:
        assert isinstance(exc, weak_key_error()) and "small-order" in str(exc)
        assert km.list_keys() == []
        return
    # Only without the fix (main 9603a3d): the forgery the import allowed, end to end.
    km.create_anchor("pkg:npm/*", ["attacker"], ["evidence.stella/v1"])
    result = km.verify(forged_proof(), purl=PURL)
    pytest.fail(f"the identity point was imported; a forged proof then verifies: ok={result.ok}")


def test_weak_key_in_the_store_is_refused_on_read() -> None:
    """A hostile database writer plants the identity key: reading it back refuses it."""
    from stellakeys import FrozenClock, KeyManager
    from stellakeys.keys import KeyOrigin, KeyRecord
    from stellakeys.storage.memory import MemoryStore

    store = MemoryStore()
    km = KeyManager(store, clock=FrozenClock(NOW), actor="tester")
    fingerprint = "SHA256:" + hashlib.sha256(ed25519_spki(IDENTITY)).hexdigest()
    record = KeyRecord(
        key_id="planted",
        algorithm="ed25519",
        public_key_pem=ed25519_pem(IDENTITY),
        fingerprint=fingerprint,
        created_at=NOW,
        profile=None,
        key_store_uri=None,
        origin=KeyOrigin.IMPORTED,
    )
    with store.transaction() as tx:
        tx.insert_key(record)
    with pytest.raises(weak_key_error()):
        km.get_key("planted").public_key()
    # And the verify path, which reads keys from the store, never accepts the forgery.
    km.create_anchor("pkg:npm/*", ["planted"], ["evidence.stella/v1"])
    try:
        result = km.verify(forged_proof(), purl=PURL)
    except MalformedKeyError as exc:
        assert isinstance(exc, weak_key_error())
    else:
        assert not result.ok, "a forged proof verified under a planted identity key"


def test_weak_key_in_a_feed_is_refused(stellakeys_manager: Any, stellakeys_clock: Any) -> None:
    """A feed that carries the identity point as an anchor key (fingerprint made to match)."""
    from stellakeys.feed import FeedConfig, FeedError, parse_feed, publish_feed

    km = stellakeys_manager
    for key_id in ("f1", "k1"):
        km.generate_key(key_id)
    km.create_anchor("pkg:npm/*", ["k1"], ["evidence.stella/v1"])
    feed = publish_feed(km, FeedConfig(("f1",), threshold=1), include_keys=True).feed
    body = json.loads(feed.envelope.payload)
    entry = body["anchors"][0]["keyHistory"][0]
    entry["publicKey"] = ed25519_pem(IDENTITY)
    entry["fingerprint"] = "SHA256:" + hashlib.sha256(ed25519_spki(IDENTITY)).hexdigest()
    with pytest.raises(FeedError, match="small-order"):
        parse_feed(Envelope(feed.envelope.payload_type, json.dumps(body).encode(), ()))


def cli(env: dict[str, str], *args: str, input: bytes | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        input=input,
        capture_output=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "weak-keys-test-passphrase",
        "STELLAKEYS_ACTOR": "ops@example.com",
    }


@pytest.mark.parametrize("name", ["identity (order 1)", "order 8, a"])
def test_cli_key_import_of_a_small_order_key_fails_in_one_line(
    cli_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    pem = tmp_path / "evil.pem"
    pem.write_text(ed25519_pem(bytes.fromhex(SMALL_ORDER[name])))
    proc = cli(cli_env, "key", "import", "--key-id", "evil", "--public-key", str(pem))
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.stdout, err)
    assert err.startswith("error: ") and "small-order" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    listed = cli(cli_env, "key", "list", "--json")
    assert b"evil" not in listed.stdout


# --- ECDSA P-256 / P-384 ----------------------------------------------------------------------

P256 = Curve(
    p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    a=-3,
    b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    q=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    x=0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    y=0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
P384 = Curve(
    p=2**384 - 2**128 - 2**96 + 2**32 - 1,
    a=-3,
    b=int(
        "B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8ED"
        "D3EC2AEF",
        16,
    ),
    q=int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196A"
        "CCC52973",
        16,
    ),
    x=int(
        "AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E38"
        "72760AB7",
        16,
    ),
    y=int(
        "3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C"
        "90EA0E5F",
        16,
    ),
)
EC_CASES = {
    "ecdsa-p256-sha256": (P256, "1.2.840.10045.3.1.7", 32),
    "ecdsa-p384-sha384": (P384, "1.3.132.0.34", 48),
    "sm2-sm3": (SM2_CURVE, "1.2.156.10197.1.301", 32),
}


def ec_spki(curve_oid: str, point: bytes) -> bytes:
    algorithm = tlv(0x30, oid("1.2.840.10045.2.1") + oid(curve_oid))
    return tlv(0x30, algorithm + tlv(0x03, b"\x00" + point))


def sqrt_mod(value: int, p: int) -> int | None:
    assert p % 4 == 3
    root = pow(value, (p + 1) // 4, p)
    return root if root * root % p == value % p else None


def small_x_point(curve: Curve) -> tuple[int, int]:
    """A point whose x is small enough that x + p still fits the coordinate's bytes."""
    x = 0
    while (y := sqrt_mod(x**3 + curve.a * x + curve.b, curve.p)) is None:
        x += 1
    return x, y


@pytest.mark.parametrize("alg_id", list(EC_CASES))
def test_ec_weak_points_are_refused(alg_id: str) -> None:
    curve, curve_oid, size = EC_CASES[alg_id]
    check_curve(curve)

    def enc(v: int) -> bytes:
        return v.to_bytes(size, "big")

    gx, gy = curve.x, curve.y
    x0, y0 = small_x_point(curve)
    assert curve.on_curve((x0, y0)) and x0 + curve.p < 2 ** (8 * size)
    cases = {
        "infinity": b"\x00",
        "off curve (1, 1)": b"\x04" + enc(1) + enc(1),
        "off curve (G.x, G.y + 1)": b"\x04" + enc(gx) + enc((gy + 1) % curve.p),
        "x + p": b"\x04" + enc(x0 + curve.p) + enc(y0),
        "hybrid form": bytes([6 + (gy & 1)]) + enc(gx) + enc(gy),
        "truncated": b"\x04" + enc(gx) + enc(gy)[:-1],
        "empty": b"",
    }
    for name, point in cases.items():
        with pytest.raises(MalformedKeyError) as info:
            load_public_key_der(ec_spki(curve_oid, point))
        assert isinstance(info.value, weak_key_error()), (name, info.value)
    # The generator itself is a valid public key (d = 1): the checks do not over-refuse.
    assert load_public_key_der(ec_spki(curve_oid, b"\x04" + enc(gx) + enc(gy)))


@pytest.mark.parametrize("alg_id", ["ecdsa-p256-sha256", "ecdsa-p384-sha384"])
def test_ecdsa_compressed_point_is_accepted_with_the_same_fingerprint(alg_id: str) -> None:
    key = get_algorithm(alg_id).generate()
    public = key.public_key()
    backend = serialization.load_der_public_key(public.spki_der)
    assert isinstance(backend, ec.EllipticCurvePublicKey)
    compressed = backend.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    loaded = load_public_key_der(ec_spki(EC_CASES[alg_id][1], compressed))
    assert loaded.fingerprint == public.fingerprint
    loaded.verify(key.sign(b"m"), b"m")


# --- GOST R 34.10-2012 -------------------------------------------------------------------------

#: id-tc26-gost-3410-2012-256-paramSetA (RFC 7836 appendix A.2), Weierstrass form: cofactor 4.
TC26_256_A = Curve(
    p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFD97,
    a=0xC2173F1513981673AF4892C23035A27CE25E2013BF95AA33B22C656F277E7335,
    b=0x295F9BAE7428ED9CCC20E7C359A9D41A22FCCD9108E17BF7BA9337A6F8AE9513,
    q=0x400000000000000000000000000000000FD8CDDFC87B6635C115AF556C360C67,
    x=0x91E38443A5E82C0D880923425712B2BB658B9196932E02C78B2582FE742DAA28,
    y=0x32879423AB1A0375895786C4BB46E9565FDE0B5344766740AF268ADB32322E5C,
)
GOST_256_OID = "1.2.643.7.1.1.1.1"
CRYPTOPRO_A_OID = "1.2.643.2.2.35.1"
TC26_256_A_OID = "1.2.643.7.1.2.1.1.1"
STREEBOG_256_OID = "1.2.643.7.1.1.2.2"


def test_gost_off_curve_and_zero_points_are_refused() -> None:
    check_curve(CRYPTOPRO_A)
    for x, y in ((0, 0), (1, 1), (CRYPTOPRO_A.x, CRYPTOPRO_A.y + 1)):
        der = gost_spki(GOST_256_OID, CRYPTOPRO_A_OID, STREEBOG_256_OID, x, y)
        with pytest.raises(MalformedKeyError):
            load_public_key_der(der)
    g = (CRYPTOPRO_A.x, CRYPTOPRO_A.y)
    honest = gost_spki(GOST_256_OID, CRYPTOPRO_A_OID, STREEBOG_256_OID, *g)
    assert load_public_key_der(honest)


def test_gost_points_outside_the_prime_order_subgroup_are_refused() -> None:
    """TC26-256-A has cofactor 4: [q]R for a random point R lies in the small subgroup."""
    curve = TC26_256_A
    check_curve(curve)
    x = 2
    torsion = None
    while torsion is None:
        x += 1
        y = sqrt_mod(x**3 + curve.a * x + curve.b, curve.p)
        if y is not None:
            torsion = curve.mul(curve.q, (x, y))
    assert curve.mul(4, torsion) is None  # order 2 or 4
    generated = get_algorithm("gost-r-34.10-2012-256").generate(paramset="TCA")  # type: ignore[call-arg]
    der = generated.public_key().spki_der
    header = der[:-64]
    honest = (int.from_bytes(der[-64:-32], "little"), int.from_bytes(der[-32:], "little"))
    assert curve.on_curve(honest) and curve.mul(curve.q, honest) is None
    mixed = curve.add(honest, torsion)
    assert mixed is not None
    for name, (px, py) in {"small order": torsion, "honest + torsion": mixed}.items():
        crafted = header + px.to_bytes(32, "little") + py.to_bytes(32, "little")
        with pytest.raises(MalformedKeyError) as info:
            load_public_key_der(crafted)
        assert isinstance(info.value, weak_key_error()), (name, info.value)
    assert load_public_key_der(der) == generated.public_key()


# --- ML-DSA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg_id", ["ml-dsa-44", "ml-dsa-65", "ml-dsa-87"])
def test_ml_dsa_wrong_length_is_refused(alg_id: str) -> None:
    public = get_algorithm(alg_id).generate().public_key()
    key = public.spki_der[-get_algorithm(alg_id).public_key_size :]  # type: ignore[attr-defined]
    algorithm = tlv(0x30, oid(get_algorithm(alg_id).spki_oid))
    for bad in (key[:-1], key + b"\x00"):
        der = tlv(0x30, algorithm + tlv(0x03, b"\x00" + bad))
        with pytest.raises(weak_key_error(), match="bytes"):
            load_public_key_der(der)
    assert load_public_key_der(tlv(0x30, algorithm + tlv(0x03, b"\x00" + key))) == public


def test_weak_key_error_is_a_typed_malformed_key_error() -> None:
    error = weak_key_error()
    assert issubclass(error, MalformedKeyError) and issubclass(error, errors.StellaKeysError)

"""SM2 and GOST R 34.10-2012 through the system libcrypto and the gost engine.

Expected values come from the standards, not from stellakeys:

* SM2: the GB/T 32918 (GM/T 0003) signature example on the recommended curve, as reproduced in
  OpenSSL's test/sm2_internal_test.c: key, Z_A, nonce, r and s for ID "1234567812345678"; and
  the same key and nonce with ID "ALICE123@YAHOO.COM".
* GOST: RFC 7091 section 7.1 (256-bit, id-GostR3410-2001-TestParamSet) and 7.2 (512-bit test
  curve). The RFC gives the hash as the integer alpha (= e here), so those vectors are checked
  with a raw EVP_PKEY_verify over the digest bytes (the engine reads them little-endian).
* Streebog: GOST R 34.11-2012 / RFC 6986 message M1, in OpenSSL's byte order.

A small test-only pure-Python implementation of both verification equations cross-checks the
vectors *and* signatures made by the product code on the production curves (CryptoPro-A,
TC26-512-A, SM2), so the known answers pin the byte layouts the product uses.

A missing libcrypto or gost engine fails these tests with what to install; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stellakeys.crypto import _libcrypto as native
from stellakeys.crypto import (
    algorithm_of_spki,
    get_algorithm,
    load_private_key_pem,
    load_public_key_der,
    load_public_key_pem,
)
from stellakeys.crypto._base import PrivateKey, PublicKey, pem_from_der
from stellakeys.crypto._gost import GOST_256, GOST_512, Gost, GostPublicKey
from stellakeys.crypto._sm2 import DEFAULT_DISTINGUISHING_ID, SM2_ORDER, SM2_SM3, Sm2
from stellakeys.errors import (
    BackendUnavailableError,
    InvalidSignatureError,
    MalformedKeyError,
    StellaKeysError,
    UnsupportedKeyError,
)

IDS = ["sm2-sm3", "gost-r-34.10-2012-256", "gost-r-34.10-2012-512"]
PASSPHRASE = b"correct horse battery staple"


# --- requirements: fail (never skip) with what to install -------------------------------------


@pytest.fixture(scope="module", autouse=True)
def native_backend() -> None:
    """libcrypto.so.3 and the gost engine must be present; say what to install if not."""
    try:
        native.lib()
    except BackendUnavailableError as exc:
        pytest.fail(f"{exc} (Debian: apt-get install libssl3)")
    try:
        native.ensure_gost_engine()
    except BackendUnavailableError as exc:
        pytest.fail(f"{exc} (Debian: apt-get install libengine-gost-openssl)")


# --- tiny DER writer for hand-made keys (test only) ------------------------------------------


def tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body + value


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, out)


def sm2_pkcs8(d: int) -> bytes:
    """PrivateKeyInfo for SM2 with ECPrivateKey{1, d} (OpenSSL derives Q from d)."""
    ec_private = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x04, d.to_bytes(32, "big")))
    algorithm = tlv(0x30, oid("1.2.840.10045.2.1") + oid("1.2.156.10197.1.301"))
    return tlv(0x30, tlv(0x02, b"\x00") + algorithm + tlv(0x04, ec_private))


def gost_algorithm_id(key_oid: str, paramset: str, digest_oid: str | None) -> bytes:
    params = oid(paramset) + (oid(digest_oid) if digest_oid else b"")
    return tlv(0x30, oid(key_oid) + tlv(0x30, params))


def gost_pkcs8(key_oid: str, paramset: str, digest_oid: str | None, d: int, size: int) -> bytes:
    """PrivateKeyInfo as the engine writes it: OCTET STRING of d, little-endian."""
    algorithm = gost_algorithm_id(key_oid, paramset, digest_oid)
    private = tlv(0x04, d.to_bytes(size, "little"))
    return tlv(0x30, tlv(0x02, b"\x00") + algorithm + tlv(0x04, private))


def gost_spki(key_oid: str, paramset: str, digest_oid: str | None, x: int, y: int) -> bytes:
    """SubjectPublicKeyInfo as RFC 9215: BIT STRING holding OCTET STRING x || y, little-endian."""
    size = 64 if key_oid.endswith(".2") else 32
    point = x.to_bytes(size, "little") + y.to_bytes(size, "little")
    algorithm = gost_algorithm_id(key_oid, paramset, digest_oid)
    return tlv(0x30, algorithm + tlv(0x03, b"\x00" + tlv(0x04, point)))


def pem(der: bytes, label: str = "PRIVATE KEY") -> bytes:
    return pem_from_der(der, label).encode()


# --- test-only short-Weierstrass arithmetic (affine, not constant time, tests only) -----------


class Curve(NamedTuple):
    p: int
    a: int
    b: int
    q: int  # order of the base point
    x: int
    y: int

    def add(self, p1: tuple[int, int] | None, p2: tuple[int, int] | None) -> tuple[int, int] | None:
        if p1 is None:
            return p2
        if p2 is None:
            return p1
        (x1, y1), (x2, y2) = p1, p2
        if x1 == x2 and (y1 + y2) % self.p == 0:
            return None
        if p1 == p2:
            slope = (3 * x1 * x1 + self.a) * pow(2 * y1, -1, self.p) % self.p
        else:
            slope = (y2 - y1) * pow(x2 - x1, -1, self.p) % self.p
        x3 = (slope * slope - x1 - x2) % self.p
        return x3, (slope * (x1 - x3) - y1) % self.p

    def mul(self, k: int, point: tuple[int, int] | None = None) -> tuple[int, int] | None:
        point = (self.x, self.y) if point is None else point
        result: tuple[int, int] | None = None
        for bit in bin(k)[2:]:
            result = self.add(result, result)
            if bit == "1":
                result = self.add(result, point)
        return result

    def on_curve(self, point: tuple[int, int]) -> bool:
        x, y = point
        return (y * y - x * x * x - self.a * x - self.b) % self.p == 0


def check_curve(curve: Curve) -> None:
    """A mistyped constant must not pass silently: G is on the curve and has order q."""
    assert curve.on_curve((curve.x, curve.y))
    assert curve.mul(curve.q) is None


def gost_verify_reference(
    curve: Curve, q_point: tuple[int, int], alpha: int, signature: bytes
) -> bool:
    """GOST R 34.10-2012 section 6.2 on an ``s || r`` signature (RFC 7091 section 6.2)."""
    size = len(signature) // 2
    s = int.from_bytes(signature[:size], "big")
    r = int.from_bytes(signature[size:], "big")
    if not (0 < r < curve.q and 0 < s < curve.q):
        return False
    e = alpha % curve.q or 1
    v = pow(e, -1, curve.q)
    z1, z2 = s * v % curve.q, -r * v % curve.q
    c = curve.add(curve.mul(z1), curve.mul(z2, q_point))
    return c is not None and c[0] % curve.q == r


# RFC 7091 section 7.1 (id-GostR3410-2001-TestParamSet).
GOST_TEST_256 = Curve(
    p=0x8000000000000000000000000000000000000000000000000000000000000431,
    a=7,
    b=0x5FBFF498AA938CE739B8E022FBAFEF40563F6E6A3472FC2A514C0CE9DAE23B7E,
    q=0x8000000000000000000000000000000150FE8A1892976154C59CFC193ACCF5B3,
    x=2,
    y=0x08E2A8A0E65147D4BD6316030E16D19C85C97F0A9CA267122B96ABBCEA7E8FC8,
)
RFC7091_256 = {
    "d": 0x7A929ADE789BB9BE10ED359DD39A72C11B60961F49397EEE1D19CE9891EC3B28,
    "qx": 0x7F2B49E270DB6D90D8595BEC458B50C58585BA1D4E9B788F6689DBD8E56FD80B,
    "qy": 0x26F1B489D6701DD185C8413A977B3CBBAF64D1C593D26627DFFB101A87FF77DA,
    "e": 0x2DFBC1B372D89A1188C09C52E0EEC61FCE52032AB1022E8E67ECE6672B043EE5,
    "r": 0x41AA28D2F1AB148280CD9ED56FEDA41974053554A42767B83AD043FD39DC0493,
    "s": 0x01456C64BA4642A1653C235A98A60249BCD6D3F746B631DF928014F6C5BF9C40,
}

# RFC 7091 section 7.2 (512-bit test curve; the RFC prints p, a, b, q, x, y in decimal).
GOST_TEST_512 = Curve(
    p=int(
        "36239861022290036359077887536838743060213209255346786050865461504508561666240024825884"
        "82022271496854025090823603058735163734263822371964987228582907372403"
    ),
    a=7,
    b=int(
        "15186550692108285345089500347140431549287475277402064361940188233528099824437937328297"
        "56914785974674866041605397883677596626326413990136959047435811826396"
    ),
    q=int(
        "36239861022290036359077887536838743060213209255346786050865461504508561666239691648983"
        "05032863068499961404079437936585455865192212970734808812618120619743"
    ),
    x=int(
        "19283569440670228493993094012431375989977866354595079743570754913077665926858354410655"
        "57681003184874819658004903212332884252335830250729527632383493573274"
    ),
    y=int(
        "22887286933719728599700121555294784163535623273295061803144974259311028603015728141419"
        "97072271708807066593850650334152381857347798885864807605098724013854"
    ),
)
RFC7091_512 = {
    "d": int(
        "0BA6048AADAE241BA40936D47756D7C93091A0E8514669700EE7508E508B102072E8123B2200A0563322DAD"
        "2827E2714A2636B7BFD18AADFC62967821FA18DD4",
        16,
    ),
    "qx": int(
        "115DC5BC96760C7B48598D8AB9E740D4C4A85A65BE33C1815B5C320C854621DD5A515856D13314AF69BC5B9"
        "24C8B4DDFF75C45415C1D9DD9DD33612CD530EFE1",
        16,
    ),
    "qy": int(
        "37C7C90CD40B0F5621DC3AC1B751CFA0E2634FA0503B3D52639F5D7FB72AFD61EA199441D943FFE7F0C70A2"
        "759A3CDB84C114E1F9339FDF27F35ECA93677BEEC",
        16,
    ),
    "e": int(
        "3754F3CFACC9E0615C4F4A7C4D8DAB531B09B6F9C170C533A71D147035B0C5917184EE536593F4414339976"
        "C647C5D5A407ADEDB1D560C4FC6777D2972075B8C",
        16,
    ),
    "r": int(
        "2F86FA60A081091A23DD795E1E3C689EE512A3C82EE0DCC2643C78EEA8FCACD35492558486B20F1C9EC197C"
        "90699850260C93BCBCD9C5C3317E19344E173AE36",
        16,
    ),
    "s": int(
        "1081B394696FFE8E6585E7A9362D26B6325F56778AADBC081C0BFBE933D52FF5823CE288E8C4F3625260"
        "80DF7F70CE406A6EEB1F56919CB92A9853BDE73E5B4A",
        16,
    ),
}

# Production curves (RFC 4357 section 11.4 CryptoPro-A; RFC 7836 / TC26 512-A).
CRYPTOPRO_A = Curve(
    p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFD97,
    a=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFD94,
    b=0xA6,
    q=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF6C611070995AD10045841B09B761B893,
    x=1,
    y=0x8D91E471E0989CDA27DF505A453F2B7635294F2DDF23E3B122ACC99C9E9F1E14,
)
TC26_512_A = Curve(
    p=2**512 - 569,
    a=2**512 - 569 - 3,
    b=int(
        "E8C2505DEDFC86DDC1BD0B2B6667F1DA34B82574761CB0E879BD081CFD0B6265EE3CB090F30D27614CB45740"
        "10DA90DD862EF9D4EBEE4761503190785A71C760",
        16,
    ),
    q=int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF27E69532F48D89116FF22B8D"
        "4E0560609B4B38ABFAD2B85DCACDB1411F10B275",
        16,
    ),
    x=3,
    y=int(
        "7503CFE87A836AE3A61B8816E25450E6CE5E1C93ACF1ABC1778064FDCBEFA921DF1626BE4FD036E93D75E6A5"
        "0E3A41E98028FE5FC235F5B889A589CB5215F2A4",
        16,
    ),
)

# GB/T 32918.5 recommended curve.
SM2_CURVE = Curve(
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    q=SM2_ORDER,
    x=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    y=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)
SM2_EXAMPLE = {
    "d": 0x3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8,
    "qx": 0x09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020,
    "qy": 0xCCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13,
    "k": 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21,
    "z": 0xB2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3,
    "r": 0xF5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3,
    "s": 0xB1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA,
    # The same key, message and k with ID "ALICE123@YAHOO.COM".
    "alice_r": 0xB0E3E7D4AC2178F833AD73FA9D1191E41C76C8BFEDB5AD89040BA2E5184BDE58,
    "alice_s": 0xCC8D096578F7DD2669AC1AC42F7E722BCFA42B9E0BE0B1B5DF7CA0B53FDD5750,
}

STREEBOG_M1 = b"012345678901234567890123456789012345678901234567890123456789012"
STREEBOG_M1_256 = "9d151eefd8590b89daa6ba6cb74af9275dd051026bb149a452fd84e5e57b5500"
STREEBOG_M1_512 = (
    "1b54d01a4af5b9d5cc3d86d68d285462b19abc2475222f35c085122be4ba1ffa"
    "00ad30f8767b3a82384c6574f024c311e2a481332b08ef7f41797891c1646f48"
)


def sm3(data: bytes) -> bytes:
    return native.digest("SM3", data)


def sm2_z(distinguishing_id: bytes, point: tuple[int, int]) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA), GB/T 32918.2 section 5.5."""

    def b32(v: int) -> bytes:
        return v.to_bytes(32, "big")

    c = SM2_CURVE
    entl = (8 * len(distinguishing_id)).to_bytes(2, "big")
    fields = b32(c.a) + b32(c.b) + b32(c.x) + b32(c.y) + b32(point[0]) + b32(point[1])
    return sm3(entl + distinguishing_id + fields)


def sm2_sign_reference(d: int, distinguishing_id: bytes, message: bytes, k: int) -> tuple[int, int]:
    """GB/T 32918.2 section 6.1 with a given k (test only)."""
    c = SM2_CURVE
    point = c.mul(d)
    assert point is not None
    e = int.from_bytes(sm3(sm2_z(distinguishing_id, point) + message), "big")
    kg = c.mul(k)
    assert kg is not None
    r = (e + kg[0]) % c.q
    s = pow(1 + d, -1, c.q) * (k - r * d) % c.q
    return r, s


def sm2_verify_reference(
    point: tuple[int, int], distinguishing_id: bytes, message: bytes, r: int, s: int
) -> bool:
    """GB/T 32918.2 section 7.1 (test only)."""
    c = SM2_CURVE
    if not (0 < r < c.q and 0 < s < c.q):
        return False
    e = int.from_bytes(sm3(sm2_z(distinguishing_id, point) + message), "big")
    t = (r + s) % c.q
    if t == 0:
        return False
    xy = c.add(c.mul(s), c.mul(t, point))
    return xy is not None and (e + xy[0]) % c.q == r


def spki_point(public: PublicKey) -> tuple[int, int]:
    """The affine point of an SM2 (SEC1 uncompressed) or GOST (little-endian) public key."""
    der = public.spki_der
    if public.algorithm.id == "sm2-sm3":
        raw = der[-64:]
        return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    size = 64 if public.algorithm.id.endswith("512") else 32
    raw = der[-2 * size :]
    return int.from_bytes(raw[:size], "little"), int.from_bytes(raw[size:], "little")


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {name: get_algorithm(name).generate() for name in IDS}


# --- lazy loading -------------------------------------------------------------------------------


def test_import_does_not_load_libcrypto_and_sm2_does_not_load_the_engine() -> None:
    code = (
        "import stellakeys, stellakeys.crypto\n"
        "from stellakeys.crypto import get_algorithm, _libcrypto_core as n\n"
        "get_algorithm('sm2-sm3'); get_algorithm('gost-r-34.10-2012-256')\n"
        "assert n._lib is None, 'libcrypto bound at import'\n"
        "k = get_algorithm('sm2-sm3').generate()\n"
        "assert n._lib is not None and n._engine is None, 'engine loaded for SM2'\n"
        "get_algorithm('gost-r-34.10-2012-256').generate()\n"
        "assert n._engine is not None\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_engine_is_a_clear_error_and_sm2_still_works() -> None:
    # OPENSSL_ENGINES redirects where ENGINE_by_id looks for gost.so: an empty directory
    # behaves like a machine without libengine-gost-openssl.
    code = (
        "from stellakeys.crypto import get_algorithm\n"
        "from stellakeys.errors import BackendUnavailableError\n"
        "get_algorithm('sm2-sm3').generate()\n"
        "try:\n"
        "    get_algorithm('gost-r-34.10-2012-512').generate()\n"
        "except BackendUnavailableError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('the engine loaded from an empty directory')\n"
    )
    env = {"OPENSSL_ENGINES": "/nonexistent-engines-dir", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "install Debian package libengine-gost-openssl" in proc.stdout


def test_missing_libcrypto_is_a_clear_error() -> None:
    code = (
        "from stellakeys.crypto import get_algorithm, _libcrypto_core as n\n"
        "n._candidates = lambda: ('libcrypto-does-not-exist.so.3',)\n"
        "try:\n"
        "    get_algorithm('sm2-sm3').generate()\n"
        "except n.BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "libcrypto-does-not-exist.so.3" in proc.stdout and "libssl3" in proc.stdout


# --- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("sm2-sm3", "sm2-sm3"),
        ("SM2-P256", "sm2-sm3"),
        ("GOST-R-34.10-2012", "gost-r-34.10-2012-256"),
        ("gost-r-34.10-2012-256", "gost-r-34.10-2012-256"),
        ("GOST-R-34.10-2012-512", "gost-r-34.10-2012-512"),
    ],
)
def test_ids_and_aliases(name: str, canonical: str) -> None:
    assert get_algorithm(name).id == canonical


@pytest.mark.parametrize("name", IDS)
def test_registry_round_trip(name: str, keys: dict[str, PrivateKey]) -> None:
    alg = get_algorithm(name)
    key = keys[name]
    public = key.public_key()
    assert key.algorithm is alg and public.algorithm is alg
    assert load_public_key_pem(public.to_pem()) == public
    assert load_public_key_der(public.spki_der).fingerprint == public.fingerprint
    assert algorithm_of_spki(public.spki_der) is alg
    assert public.fingerprint == "SHA256:" + hashlib.sha256(public.spki_der).hexdigest()

    exported = key.to_encrypted_pem(PASSPHRASE)
    assert exported.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_private_key_pem(exported, PASSPHRASE)
    assert loaded.algorithm is alg
    assert loaded.public_key() == public
    assert alg.load_private_pem(exported, PASSPHRASE).public_key() == public
    signature = loaded.sign(b"payload")
    public.verify(signature, b"payload")
    key.public_key().verify(key.sign(b"payload"), b"payload")


@pytest.mark.parametrize("name", IDS)
def test_no_unencrypted_export_and_no_secrets_in_repr(
    name: str, keys: dict[str, PrivateKey]
) -> None:
    key = keys[name]
    with pytest.raises(ValueError, match="passphrase"):
        key.to_encrypted_pem(b"")
    assert not hasattr(key, "to_pem")
    text = repr(key) + str(key) + repr(key.public_key())
    assert key.fingerprint in text
    assert "BEGIN" not in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


@pytest.mark.parametrize("name", IDS)
def test_signatures_are_randomised(name: str, keys: dict[str, PrivateKey]) -> None:
    key = keys[name]
    assert key.sign(b"same") != key.sign(b"same")


def test_wrong_algorithm_refused(keys: dict[str, PrivateKey]) -> None:
    with pytest.raises(UnsupportedKeyError):
        GOST_512.load_public_der(keys["gost-r-34.10-2012-256"].public_key().spki_der)
    with pytest.raises(UnsupportedKeyError):
        SM2_SM3.load_public_der(keys["gost-r-34.10-2012-512"].public_key().spki_der)
    exported = keys["sm2-sm3"].to_encrypted_pem(PASSPHRASE)
    with pytest.raises(UnsupportedKeyError):
        GOST_256.load_private_pem(exported, PASSPHRASE)


# --- SM2 known answers ------------------------------------------------------------------------


def sm2_example_key(alg: Sm2 = SM2_SM3) -> PrivateKey:
    return alg.load_private_pem(pem(sm2_pkcs8(SM2_EXAMPLE["d"])), None)


def test_sm2_reference_code_reproduces_the_standard_example() -> None:
    check_curve(SM2_CURVE)
    x = SM2_EXAMPLE
    assert SM2_CURVE.mul(x["d"]) == (x["qx"], x["qy"])
    assert sm2_z(DEFAULT_DISTINGUISHING_ID, (x["qx"], x["qy"])).hex() == f"{x['z']:064x}"
    r_s = sm2_sign_reference(x["d"], DEFAULT_DISTINGUISHING_ID, b"message digest", x["k"])
    assert r_s == (x["r"], x["s"])
    alice = sm2_sign_reference(x["d"], b"ALICE123@YAHOO.COM", b"message digest", x["k"])
    assert alice == (x["alice_r"], x["alice_s"])


def test_sm2_example_key_has_the_standard_public_key() -> None:
    public = sm2_example_key().public_key()
    assert spki_point(public) == (SM2_EXAMPLE["qx"], SM2_EXAMPLE["qy"])


def test_sm2_verify_accepts_the_standard_signature() -> None:
    public = sm2_example_key().public_key()
    signature = encode_dss_signature(SM2_EXAMPLE["r"], SM2_EXAMPLE["s"])
    public.verify(signature, b"message digest")
    # A different ID gives a different Z_A, so the same signature fails.
    other = SM2_SM3.with_distinguishing_id(b"ALICE123@YAHOO.COM").load_public_der(public.spki_der)
    assert not other.is_valid(signature, b"message digest")


def test_sm2_with_distinguishing_id_matches_the_alice_example() -> None:
    alice = SM2_SM3.with_distinguishing_id(b"ALICE123@YAHOO.COM")
    assert alice.id == "sm2-sm3" and alice.distinguishing_id == b"ALICE123@YAHOO.COM"
    assert "ALICE123" in repr(alice) and repr(SM2_SM3) == "<Algorithm sm2-sm3>"
    signature = encode_dss_signature(SM2_EXAMPLE["alice_r"], SM2_EXAMPLE["alice_s"])
    public = sm2_example_key(alice).public_key()
    public.verify(signature, b"message digest")
    with pytest.raises(InvalidSignatureError):
        sm2_example_key().public_key().verify(signature, b"message digest")


def test_sm2_product_signatures_satisfy_the_reference_equation() -> None:
    for distinguishing_id in (DEFAULT_DISTINGUISHING_ID, b"ALICE123@YAHOO.COM", b""):
        alg = SM2_SM3.with_distinguishing_id(distinguishing_id)
        key = alg.generate()
        signature = key.sign(b"cross-check")
        r, s = native_der_scalars(signature)
        point = spki_point(key.public_key())
        assert sm2_verify_reference(point, distinguishing_id, b"cross-check", r, s)
        assert not sm2_verify_reference(point, b"other", b"cross-check", r, s)


def native_der_scalars(signature: bytes) -> tuple[int, int]:
    from stellakeys.crypto._ecsig import parse_strict_der

    return parse_strict_der(signature, SM2_ORDER)


def test_sm2_distinguishing_id_validation() -> None:
    with pytest.raises(TypeError):
        Sm2("1234567812345678")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8190"):
        Sm2(b"x" * 8191)
    Sm2(b"x" * 8190).generate().sign(b"long ids are fine")


# --- SM2 negatives ---------------------------------------------------------------------------


def der_integer(value: int, pad: bytes = b"") -> bytes:
    """DER INTEGER of a non-negative value; ``pad`` prepends bytes to make it non-canonical."""
    return tlv(0x02, pad + value.to_bytes(value.bit_length() // 8 + 1, "big"))


def sm2_bad_signatures(r: int, s: int) -> Iterator[tuple[str, bytes]]:
    n = SM2_ORDER
    good = encode_dss_signature(r, s)
    assert good == tlv(0x30, der_integer(r) + der_integer(s))
    yield "r = 0", encode_dss_signature(0, s)
    yield "s = 0", encode_dss_signature(r, 0)
    yield "r = n", encode_dss_signature(n, s)
    yield "s = n", encode_dss_signature(r, n)
    yield "r = r + n", encode_dss_signature(r + n, s)
    yield "trailing byte", good + b"\x00"
    yield "raw r || s", r.to_bytes(32, "big") + s.to_bytes(32, "big")
    yield "empty", b""
    # Non-canonical DER of the same (r, s): a redundant leading zero, a long-form length.
    yield "padded INTEGER", tlv(0x30, der_integer(r, pad=b"\x00") + der_integer(s))
    body = good[2:]
    yield "long-form length", b"\x30\x81" + bytes([len(body)]) + body


def test_sm2_verify_rejects(keys: dict[str, PrivateKey]) -> None:
    key = keys["sm2-sm3"]
    public = key.public_key()
    signature = key.sign(b"message")
    public.verify(signature, b"message")
    r, s = native_der_scalars(signature)
    for what, bad in sm2_bad_signatures(r, s):
        with pytest.raises(InvalidSignatureError):
            public.verify(bad, b"message")
        assert not public.is_valid(bad, b"message"), what
    with pytest.raises(InvalidSignatureError, match="does not verify"):
        public.verify(signature, b"messagE")
    with pytest.raises(InvalidSignatureError):
        SM2_SM3.generate().public_key().verify(signature, b"message")
    with pytest.raises(InvalidSignatureError):
        SM2_SM3.with_distinguishing_id(b"8765432187654321").load_public_der(public.spki_der).verify(
            signature, b"message"
        )


@pytest.mark.parametrize(
    "d",
    [0, SM2_ORDER - 1, SM2_ORDER, SM2_ORDER + 1, 2**256 - 1],
    ids=["0", "n-1", "n", "n+1", "max"],
)
def test_sm2_private_scalar_out_of_range_refused(d: int) -> None:
    # SM2 needs d <= n-2 because it inverts 1 + d.
    with pytest.raises(MalformedKeyError):
        load_private_key_pem(pem(sm2_pkcs8(d)), None)


@pytest.mark.parametrize("d", [1, SM2_ORDER - 2])
def test_sm2_private_scalar_edges_accepted(d: int) -> None:
    key = load_private_key_pem(pem(sm2_pkcs8(d)), None)
    key.public_key().verify(key.sign(b"edge"), b"edge")


def test_sm2_public_key_checks(keys: dict[str, PrivateKey]) -> None:
    der = keys["sm2-sm3"].public_key().spki_der
    x, y = spki_point(keys["sm2-sm3"].public_key())
    header = der[:-65]
    off_curve = (
        header + b"\x04" + x.to_bytes(32, "big") + ((y + 1) % SM2_CURVE.p).to_bytes(32, "big")
    )
    with pytest.raises(MalformedKeyError):
        load_public_key_der(off_curve)
    compressed_body = bytes([2 + (y & 1)]) + x.to_bytes(32, "big")
    algorithm = tlv(0x30, oid("1.2.840.10045.2.1") + oid("1.2.156.10197.1.301"))
    compressed = tlv(0x30, algorithm + tlv(0x03, b"\x00" + compressed_body))
    with pytest.raises(MalformedKeyError, match="uncompressed"):
        load_public_key_der(compressed)
    with pytest.raises(MalformedKeyError):
        load_public_key_der(der + b"\x00")


def test_private_key_errors(keys: dict[str, PrivateKey]) -> None:
    for name in IDS:
        exported = keys[name].to_encrypted_pem(PASSPHRASE)
        with pytest.raises(MalformedKeyError) as info:
            load_private_key_pem(exported, b"wrong passphrase")
        message = str(info.value)
        assert message == "cannot decrypt or parse private key (wrong passphrase or corrupt PEM)"
        with pytest.raises(MalformedKeyError):
            load_private_key_pem(exported, None)
        with pytest.raises(MalformedKeyError):
            get_algorithm(name).load_private_pem(exported, b"wrong passphrase")
    from stellakeys.crypto._native import load_native_private_pem

    exported = keys["sm2-sm3"].to_encrypted_pem(PASSPHRASE)
    with pytest.raises(MalformedKeyError, match="passphrase is required"):
        load_native_private_pem(exported, None)
    plain = pem(sm2_pkcs8(SM2_EXAMPLE["d"]))
    with pytest.raises(MalformedKeyError, match="not encrypted"):
        load_native_private_pem(plain, b"pw")
    with pytest.raises(UnsupportedKeyError, match="PKCS#8"):
        load_native_private_pem(plain.replace(b"PRIVATE KEY", b"EC PRIVATE KEY"), None)
    corrupt = plain.replace(plain[40:44], b"AAAA")
    with pytest.raises(StellaKeysError):
        load_native_private_pem(corrupt, None)


# --- GOST known answers -----------------------------------------------------------------------


def test_streebog_known_answers() -> None:
    assert native.digest("md_gost12_256", STREEBOG_M1).hex() == STREEBOG_M1_256
    assert native.digest("md_gost12_512", STREEBOG_M1).hex() == STREEBOG_M1_512


@pytest.mark.parametrize(
    ("vector", "curve", "key_oid", "paramset", "digest_oid", "size"),
    [
        (
            RFC7091_256,
            GOST_TEST_256,
            "1.2.643.7.1.1.1.1",
            "1.2.643.2.2.35.0",
            "1.2.643.7.1.1.2.2",
            32,
        ),
        (RFC7091_512, GOST_TEST_512, "1.2.643.7.1.1.1.2", "1.2.643.7.1.2.1.2.0", None, 64),
    ],
    ids=["rfc7091-7.1-256", "rfc7091-7.2-512"],
)
def test_gost_rfc7091_example(
    vector: dict[str, int],
    curve: Curve,
    key_oid: str,
    paramset: str,
    digest_oid: str | None,
    size: int,
) -> None:
    check_curve(curve)
    point = (vector["qx"], vector["qy"])
    signature = vector["s"].to_bytes(size, "big") + vector["r"].to_bytes(size, "big")

    # The test-only code agrees with the RFC: Q = dG and the signature verifies over e.
    assert curve.mul(vector["d"]) == point
    assert gost_verify_reference(curve, point, vector["e"], signature)

    # The engine agrees: it derives the same Q from d (through our PKCS#8 loader) ...
    alg = GOST_256 if size == 32 else GOST_512
    key = alg.load_private_pem(
        pem(gost_pkcs8(key_oid, paramset, digest_oid, vector["d"], size)), None
    )
    assert spki_point(key.public_key()) == point
    public = alg.load_public_der(gost_spki(key_oid, paramset, digest_oid, *point))
    assert isinstance(public, GostPublicKey) and public.paramset_oid == paramset
    assert public == key.public_key()
    # ... and accepts the RFC signature over the digest read little-endian, and nothing else.
    pkey = public._key
    digest = vector["e"].to_bytes(size, "little")
    assert native.verify_digest(pkey, signature, digest)
    assert not native.verify_digest(pkey, signature, vector["e"].to_bytes(size, "big"))
    swapped = vector["r"].to_bytes(size, "big") + vector["s"].to_bytes(size, "big")
    assert not native.verify_digest(pkey, swapped, digest)
    # Signatures the engine makes on the test curve satisfy the reference equation too.
    message = b"engine on the RFC test curve"
    alpha = int.from_bytes(native.digest(alg.digest_name, message), "little")
    assert gost_verify_reference(curve, point, alpha, key.sign(message))


@pytest.mark.parametrize(
    ("name", "curve"),
    [("gost-r-34.10-2012-256", CRYPTOPRO_A), ("gost-r-34.10-2012-512", TC26_512_A)],
)
def test_gost_product_signatures_satisfy_the_reference_equation(name: str, curve: Curve) -> None:
    check_curve(curve)
    alg = get_algorithm(name)
    assert isinstance(alg, Gost)
    key = alg.generate()
    public = key.public_key()
    assert isinstance(public, GostPublicKey)
    assert public._order == curve.q
    point = spki_point(public)
    assert curve.on_curve(point)
    for message in (b"", b"abc", STREEBOG_M1, bytes(range(256)) * 5):
        signature = key.sign(message)
        alpha = int.from_bytes(native.digest(alg.digest_name, message), "little")
        assert gost_verify_reference(curve, point, alpha, signature)
        assert not gost_verify_reference(curve, point, alpha + 1, signature)


def test_gost_default_paramsets(keys: dict[str, PrivateKey]) -> None:
    p256 = keys["gost-r-34.10-2012-256"].public_key()
    p512 = keys["gost-r-34.10-2012-512"].public_key()
    assert isinstance(p256, GostPublicKey) and isinstance(p512, GostPublicKey)
    assert p256.paramset_oid == "1.2.643.2.2.35.1"  # CryptoPro-A
    assert p512.paramset_oid == "1.2.643.7.1.2.1.2.1"  # TC26-512-A


@pytest.mark.parametrize(
    ("alg", "paramset", "oid_"),
    [
        (GOST_256, "TCA", "1.2.643.7.1.2.1.1.1"),
        (GOST_256, "B", "1.2.643.2.2.35.2"),
        (GOST_512, "C", "1.2.643.7.1.2.1.2.3"),
    ],
)
def test_gost_other_paramsets(alg: Gost, paramset: str, oid_: str) -> None:
    key = alg.generate(paramset=paramset)
    public = key.public_key()
    assert isinstance(public, GostPublicKey) and public.paramset_oid == oid_
    again = load_public_key_pem(public.to_pem())
    again.verify(key.sign(b"paramset"), b"paramset")
    reloaded = load_private_key_pem(key.to_encrypted_pem(PASSPHRASE), PASSPHRASE)
    public.verify(reloaded.sign(b"x"), b"x")


def test_gost_unknown_paramset() -> None:
    with pytest.raises(ValueError, match="paramset"):
        GOST_512.generate(paramset="TCA")


# --- GOST negatives ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gost-r-34.10-2012-256", "gost-r-34.10-2012-512"])
def test_gost_verify_rejects(name: str, keys: dict[str, PrivateKey]) -> None:
    key = keys[name]
    public = key.public_key()
    assert isinstance(public, GostPublicKey)
    size = public.algorithm.size
    q = public._order
    signature = key.sign(b"message")
    public.verify(signature, b"message")
    s, r = signature[:size], signature[size:]

    def be(v: int) -> bytes:
        return v.to_bytes(size, "big")

    bad = {
        "short": signature[:-1],
        "long": signature + b"\x00",
        "empty": b"",
        "half": signature[:size],
        "s = 0": be(0) + r,
        "r = 0": s + be(0),
        "s = q": be(q) + r,
        "r = q": s + be(q),
        "r = all ones": s + b"\xff" * size,
        "swapped": r + s,
    }
    for what, candidate in bad.items():
        with pytest.raises(InvalidSignatureError):
            public.verify(candidate, b"message")
        assert not public.is_valid(candidate, b"message"), what
    with pytest.raises(InvalidSignatureError, match="does not verify"):
        public.verify(signature, b"messagE")
    with pytest.raises(InvalidSignatureError):
        get_algorithm(name).generate().public_key().verify(signature, b"message")


@pytest.mark.parametrize(
    ("alg", "key_oid", "paramset", "digest_oid", "curve"),
    [
        (GOST_256, "1.2.643.7.1.1.1.1", "1.2.643.2.2.35.1", "1.2.643.7.1.1.2.2", CRYPTOPRO_A),
        (GOST_512, "1.2.643.7.1.1.1.2", "1.2.643.7.1.2.1.2.1", None, TC26_512_A),
    ],
    ids=["256", "512"],
)
def test_gost_private_scalar_out_of_range_refused(
    alg: Gost, key_oid: str, paramset: str, digest_oid: str | None, curve: Curve
) -> None:
    size = alg.size
    for d in (0, curve.q, curve.q + 1, 2 ** (8 * size) - 1):
        blob = pem(gost_pkcs8(key_oid, paramset, digest_oid, d, size))
        with pytest.raises(MalformedKeyError, match="outside"):
            load_private_key_pem(blob, None)
        with pytest.raises(MalformedKeyError):
            alg.load_private_pem(blob, None)
    for d in (1, curve.q - 1):
        key = load_private_key_pem(pem(gost_pkcs8(key_oid, paramset, digest_oid, d, size)), None)
        key.public_key().verify(key.sign(b"edge"), b"edge")


def test_gost_public_key_off_curve_refused(keys: dict[str, PrivateKey]) -> None:
    x, y = spki_point(keys["gost-r-34.10-2012-256"].public_key())
    der = gost_spki("1.2.643.7.1.1.1.1", "1.2.643.2.2.35.1", "1.2.643.7.1.1.2.2", x, y + 1)
    with pytest.raises(MalformedKeyError):
        load_public_key_der(der)


# --- threads --------------------------------------------------------------------------------


def test_openssl_calls_release_the_gil() -> None:
    # One long libcrypto call (Streebog over 32 MiB, a few hundred ms) runs in a thread. Had
    # ctypes kept the GIL, this thread would stall for the whole call; it keeps running instead.
    import time

    data = bytes(32 << 20)
    started, done = threading.Event(), threading.Event()
    call_seconds = 0.0

    def long_call() -> None:
        nonlocal call_seconds
        started.set()
        begin = time.perf_counter()
        native.digest("md_gost12_512", data)
        call_seconds = time.perf_counter() - begin
        done.set()

    worker = threading.Thread(target=long_call)
    worker.start()
    started.wait()
    first = last = time.perf_counter()
    longest_stall = 0.0
    while not done.is_set():
        now = time.perf_counter()
        longest_stall = max(longest_stall, now - last)
        last = now
    worker.join()
    assert call_seconds > 0.05, "the call was too short to tell"
    # With the GIL held, this loop would only start once the call had returned (span ~ 0) or
    # stall for its whole duration; released, it runs alongside the call.
    assert last - first > call_seconds / 2, (last - first, call_seconds)
    assert longest_stall < call_seconds / 2, (longest_stall, call_seconds)


def test_eight_threads_sign_and_verify_concurrently(keys: dict[str, PrivateKey]) -> None:
    start = threading.Barrier(8)
    names = IDS * 3

    def work(worker: int) -> list[tuple[str, bytes, bytes]]:
        start.wait()
        out: list[tuple[str, bytes, bytes]] = []
        for i in range(30):
            name = names[(worker + i) % len(names)]
            message = f"worker {worker} message {i}".encode()
            signature = keys[name].sign(message)
            keys[name].public_key().verify(signature, message)
            out.append((name, message, signature))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [item for chunk in pool.map(work, range(8)) for item in chunk]
    assert len(results) == 240
    assert len({signature for _, _, signature in results}) == 240
    for name, message, signature in results:
        keys[name].public_key().verify(signature, message)
        assert not keys[name].public_key().is_valid(signature, message + b"!")

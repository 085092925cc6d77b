"""A small ctypes binding to the system libcrypto (OpenSSL 3), for SM2 and GOST R 34.10-2012.

Why ctypes on the system library: ``cryptography`` bundles its own OpenSSL and exposes neither
SM2 signatures nor GOST, and the GOST algorithms only exist as the gost *engine* that Debian ships
for the system OpenSSL (``libengine-gost-openssl``). ctypes in ABI mode needs no compiler or
headers, and ``ctypes.CDLL`` releases the GIL around every call, so threads sign and verify in
parallel.

Loading is lazy on purpose: importing stellakeys must work (and stay fast) on a machine without
libcrypto.so.3 or the gost engine; only the first SM2 operation loads libcrypto and only the first
GOST operation loads the engine. A missing piece raises BackendUnavailableError saying what to
install.

The engine, not the gost *provider*: Debian's libengine-gost-openssl 3.0.x ships
``ossl-modules/gostprov.so`` too, but that provider only implements the Streebog digests and
the GOST ciphers; it has no key management and no signature for GOST R 34.10-2012, so it cannot
read, generate or sign with GOST keys. ``engines-3/gost.so`` can, and it is exactly what
``openssl ... -engine gost`` uses, so keys and signatures are byte-compatible with the CLI. We
load it the way the CLI's ``-engine`` option does (ENGINE_by_id, ENGINE_init, ENGINE_set_default),
but register only the method families we need: key ASN.1 codecs, key methods, and digests.

Conventions in this file:

* Every OpenSSL function is declared once, with argtypes and restype, in one table per family
  (all in ``_libcrypto_core``, which loads and declares them), and called only through a typed
  wrapper, so mypy sees real types and a wrong argument fails in Python instead of corrupting
  memory.
* Loading, the error queue, objects, BIOs, digests and ``Pkey`` live in ``_libcrypto_core``
  (split out in issue 16) and are re-exported here; this module adds key contexts, signing,
  encodings and EC internals.
* Opaque pointers are ``c_void_p`` (Python ``int``); a NULL result is ``None``.
* Every operation clears the thread's OpenSSL error queue first and drains it on failure into
  the exception message. OpenSSL's error strings never contain key material; callers that must
  be vague (wrong passphrase) discard them.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

from stellakeys.crypto._libcrypto_core import (  # re-exported: moved in issue 16
    _SIZE,
    ENGINE_METHOD_DIGESTS,
    ENGINE_METHOD_PKEY_ASN1_METHS,
    ENGINE_METHOD_PKEY_METHS,
    GOST_PACKAGE_HINT,
    LIBCRYPTO_HINT,
    OpenSSLError,
    Pkey,
    _check,
    _oid_text,
    _read_mem_bio,
    clear_errors,
    digest,
    digest_by_name,
    discard_errors,
    ensure_gost_engine,
    fail,
    lib,
    nid_of_oid,
    oid_of_nid,
)
from stellakeys.errors import BackendUnavailableError  # re-exported: callers catch it here

__all__ = [
    "BackendUnavailableError",
    "ENGINE_METHOD_DIGESTS",
    "ENGINE_METHOD_PKEY_ASN1_METHS",
    "ENGINE_METHOD_PKEY_METHS",
    "GOST_PACKAGE_HINT",
    "LIBCRYPTO_HINT",
    "OpenSSLError",
    "Pkcs8Info",
    "Pkey",
    "check_keypair",
    "check_public",
    "clear_errors",
    "decode_pkcs8",
    "digest",
    "digest_by_name",
    "digest_sign",
    "digest_verify",
    "discard_errors",
    "ec_check_key",
    "ec_order_and_curve",
    "ec_private_in_range",
    "encrypted_pkcs8_pem",
    "ensure_gost_engine",
    "fail",
    "generate_by_name",
    "generate_by_nid",
    "lib",
    "load_spki",
    "nid_of_oid",
    "oid_of_nid",
    "spki_der",
    "verify_digest",
]


# --- key contexts (EVP_PKEY_CTX_*): generation, checks, raw verify ---------------------------


class _PkeyCtx:
    """An EVP_PKEY_CTX* for the duration of a ``with`` block."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int | None, what: str) -> None:
        if not ptr:
            fail(f"cannot create a key context for {what}")
        self.ptr: int = int(ptr)

    def __enter__(self) -> int:
        return self.ptr

    def __exit__(self, *_: object) -> None:
        lib().EVP_PKEY_CTX_free(self.ptr)


def _ctx_for(key: Pkey) -> _PkeyCtx:
    # EVP_PKEY_CTX_new (not _new_from_pkey): it also works for keys that live in an engine.
    return _PkeyCtx(lib().EVP_PKEY_CTX_new(key.ptr, None), "a key")


def generate_by_name(name: str) -> Pkey:
    """A new key of a provider key type (``"SM2"``), from OpenSSL's CSPRNG."""
    cdll = lib()
    clear_errors()
    with _PkeyCtx(cdll.EVP_PKEY_CTX_new_from_name(None, name.encode("ascii"), None), name) as c:
        _check(cdll.EVP_PKEY_keygen_init(c), f"{name} keygen init")
        return _keygen(c, name)


def generate_by_nid(nid: int, options: dict[str, str]) -> Pkey:
    """A new key of a legacy (engine) key type, with ``EVP_PKEY_CTX_ctrl_str`` options."""
    cdll = lib()
    clear_errors()
    with _PkeyCtx(cdll.EVP_PKEY_CTX_new_id(nid, None), f"NID {nid}") as c:
        _check(cdll.EVP_PKEY_keygen_init(c), "keygen init")
        for option, value in options.items():
            ok = cdll.EVP_PKEY_CTX_ctrl_str(c, option.encode("ascii"), value.encode("ascii"))
            if ok <= 0:
                fail(f"key generation option {option}={value!r} rejected", ValueError)
        return _keygen(c, f"NID {nid}")


def _keygen(ctx: int, what: str) -> Pkey:
    out = ctypes.c_void_p()
    _check(lib().EVP_PKEY_keygen(ctx, ctypes.byref(out)), f"{what} key generation")
    assert out.value is not None
    return Pkey(out.value)


def check_keypair(key: Pkey) -> bool:
    """EVP_PKEY_check: public point valid, private scalar in range, and the two match."""
    clear_errors()
    with _ctx_for(key) as c:
        ok = int(lib().EVP_PKEY_check(c)) == 1
    discard_errors()
    return ok


def check_public(key: Pkey) -> bool:
    """EVP_PKEY_public_check: on the curve, not infinity, in the prime-order subgroup."""
    clear_errors()
    with _ctx_for(key) as c:
        ok = int(lib().EVP_PKEY_public_check(c)) == 1
    discard_errors()
    return ok


def verify_digest(key: Pkey, signature: bytes, tbs: bytes) -> bool:
    """Raw EVP_PKEY_verify over an already computed digest (known-answer tests only)."""
    cdll = lib()
    clear_errors()
    with _ctx_for(key) as c:
        if cdll.EVP_PKEY_verify_init(c) != 1:
            fail("verify init")
        ok = int(cdll.EVP_PKEY_verify(c, signature, len(signature), tbs, len(tbs))) == 1
    discard_errors()
    return ok


# --- one-shot sign and verify (EVP_DigestSign*, EVP_DigestVerify*) ---------------------------


@contextlib.contextmanager
def _md_ctx(key: Pkey, distinguishing_id: bytes | None) -> Iterator[int]:
    """An EVP_MD_CTX* (and, for SM2, its key context), freed whatever happens.

    The SM2 distinguishing ID must be on the key context *before* the digest-sign init, which
    computes Z_A from it; so we create the key context ourselves, set the ID, and hand it to the
    digest context. EVP_MD_CTX_set_pkey_ctx leaves its ownership with us.
    """
    cdll = lib()
    mctx = cdll.EVP_MD_CTX_new()
    if not mctx:
        fail("EVP_MD_CTX_new")
    pctx: int | None = None
    try:
        if distinguishing_id is not None:
            pctx = _ctx_for(key).ptr
            ok = cdll.EVP_PKEY_CTX_set1_id(pctx, distinguishing_id, len(distinguishing_id))
            _check(ok, "cannot set the SM2 distinguishing ID")
            cdll.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
        yield int(mctx)
    finally:
        cdll.EVP_MD_CTX_free(mctx)
        if pctx is not None:
            cdll.EVP_PKEY_CTX_free(pctx)


def digest_sign(key: Pkey, md: int, data: bytes, distinguishing_id: bytes | None = None) -> bytes:
    """EVP_DigestSign over the message (hash-then-sign inside OpenSSL, nonce from its CSPRNG)."""
    cdll = lib()
    clear_errors()
    with _md_ctx(key, distinguishing_id) as mctx:
        _check(cdll.EVP_DigestSignInit(mctx, None, md, None, key.ptr), "sign init")
        size = _SIZE(0)
        _check(cdll.EVP_DigestSign(mctx, None, ctypes.byref(size), None, 0), "signature size")
        buf = ctypes.create_string_buffer(size.value)
        _check(cdll.EVP_DigestSign(mctx, buf, ctypes.byref(size), data, len(data)), "signing")
        return buf.raw[: size.value]


def digest_verify(
    key: Pkey, md: int, signature: bytes, data: bytes, distinguishing_id: bytes | None = None
) -> bool:
    """True when OpenSSL accepts ``signature`` over ``data``; never raises for a bad signature."""
    cdll = lib()
    clear_errors()
    with _md_ctx(key, distinguishing_id) as mctx:
        _check(cdll.EVP_DigestVerifyInit(mctx, None, md, None, key.ptr), "verify init")
        ok = int(cdll.EVP_DigestVerify(mctx, signature, len(signature), data, len(data))) == 1
    # A failed verification leaves reasons on the queue; they must not leak into the next call.
    discard_errors()
    return ok


# --- encodings: SubjectPublicKeyInfo and PKCS#8 (d2i_*, i2d_*, PKCS8_*, PEM_*) ---------------


def _d2i(fn_name: str, der: bytes) -> int | None:
    """Call a ``d2i_*`` function and insist it consumed every byte (no trailing data)."""
    buf = ctypes.create_string_buffer(der, len(der))
    start = ctypes.addressof(buf)
    cursor = ctypes.c_char_p(start)
    try:
        ptr = getattr(lib(), fn_name)(None, ctypes.byref(cursor), len(der))
        if not ptr:
            return None
        consumed = ctypes.cast(cursor, ctypes.c_void_p).value or 0
        if consumed - start != len(der):
            _free_by_d2i_name(fn_name, int(ptr))
            return None
        return int(ptr)
    finally:
        # The copy may be an unencrypted private key: do not leave it to the allocator.
        ctypes.memset(buf, 0, len(der))


def _free_by_d2i_name(fn_name: str, ptr: int) -> None:
    free = {
        "d2i_PUBKEY": "EVP_PKEY_free",
        "d2i_X509_SIG": "X509_SIG_free",
        "d2i_PKCS8_PRIV_KEY_INFO": "PKCS8_PRIV_KEY_INFO_free",
    }[fn_name]
    getattr(lib(), free)(ptr)


def load_spki(der: bytes) -> Pkey | None:
    """A public key from DER SubjectPublicKeyInfo, or None when OpenSSL cannot parse it."""
    clear_errors()
    ptr = _d2i("d2i_PUBKEY", der)
    if ptr is None:
        discard_errors()
        return None
    return Pkey(ptr)


def spki_der(key: Pkey) -> bytes:
    """DER SubjectPublicKeyInfo exactly as OpenSSL writes it (``openssl pkey -pubout``)."""
    cdll = lib()
    clear_errors()
    size = int(cdll.i2d_PUBKEY(key.ptr, None))
    if size <= 0:
        fail("cannot encode public key")
    buf = ctypes.create_string_buffer(size)
    cursor = ctypes.c_char_p(ctypes.addressof(buf))
    if int(cdll.i2d_PUBKEY(key.ptr, ctypes.byref(cursor))) != size:
        fail("cannot encode public key")
    return buf.raw


class Pkcs8Info:
    """A decrypted PKCS8_PRIV_KEY_INFO*: read its algorithm OID, turn it into a key, free it.

    Freeing it clears the private key bytes (OpenSSL frees that OCTET STRING with
    ASN1_STRING_clear_free).
    """

    __slots__ = ("_ptr",)

    def __init__(self, ptr: int) -> None:
        self._ptr = ptr

    def __enter__(self) -> Pkcs8Info:
        return self

    def __exit__(self, *_: object) -> None:
        lib().PKCS8_PRIV_KEY_INFO_free(self._ptr)

    def algorithm_oid(self) -> str:
        obj = ctypes.c_void_p()
        clear_errors()
        ok = lib().PKCS8_pkey_get0(ctypes.byref(obj), None, None, None, self._ptr)
        if ok != 1 or not obj.value:
            fail("cannot read the private key algorithm")
        return _oid_text(obj.value)

    def to_pkey(self) -> Pkey | None:
        clear_errors()
        ptr = lib().EVP_PKCS82PKEY(self._ptr)
        if not ptr:
            discard_errors()
            return None
        return Pkey(ptr)


def decode_pkcs8(der: bytes, passphrase: bytes | None) -> Pkcs8Info | None:
    """Decrypt (when ``passphrase`` is given) and parse PKCS#8; None on any failure.

    The caller decides how vague to be: a wrong passphrase and a corrupt file look the same here
    on purpose. PKCS8_decrypt takes an explicit length, so passphrases may contain NUL bytes.
    """
    cdll = lib()
    clear_errors()
    if passphrase is None:
        ptr = _d2i("d2i_PKCS8_PRIV_KEY_INFO", der)
    else:
        sig = _d2i("d2i_X509_SIG", der)
        ptr = None
        if sig is not None:
            try:
                ptr = cdll.PKCS8_decrypt(sig, passphrase, len(passphrase)) or None
            finally:
                cdll.X509_SIG_free(sig)
    discard_errors()
    return None if ptr is None else Pkcs8Info(int(ptr))


def encrypted_pkcs8_pem(key: Pkey, passphrase: bytes) -> bytes:
    """Encrypted PKCS#8 PEM: PBES2 with PBKDF2 (OpenSSL's default PRF) and AES-256-CBC."""
    cdll = lib()
    clear_errors()
    bio = cdll.BIO_new(cdll.BIO_s_mem())
    if not bio:
        fail("BIO_new")
    try:
        ok = cdll.PEM_write_bio_PKCS8PrivateKey(
            bio, key.ptr, cdll.EVP_aes_256_cbc(), passphrase, len(passphrase), None, None
        )
        _check(ok, "cannot write encrypted PKCS#8")
        return _read_mem_bio(bio)
    finally:
        cdll.BIO_free(bio)


# --- EC internals of engine keys (EC_KEY_*, EC_GROUP_*, BN_*) --------------------------------
#
# GOST keys live in the engine as EC_KEYs. The engine does not implement EVP_PKEY_check, so key
# validation and the curve order come from the EC_KEY itself. These functions are deprecated
# in OpenSSL 3 but exported, and they are the only way to look inside an engine key.


def _ec_key(key: Pkey) -> int:
    ec = lib().EVP_PKEY_get0(key.ptr)
    if not ec:
        fail("not an EC-based engine key")
    return int(ec)


def _bn_to_int(bn: int) -> int:
    size = (int(lib().BN_num_bits(bn)) + 7) // 8
    buf = ctypes.create_string_buffer(max(size, 1))
    if int(lib().BN_bn2binpad(bn, buf, len(buf))) < 0:
        fail("BN_bn2binpad")
    return int.from_bytes(buf.raw, "big")


def ec_order_and_curve(key: Pkey) -> tuple[int, int]:
    """(order q of the base point, curve NID) of an engine EC key. Both are public."""
    cdll = lib()
    clear_errors()
    group = cdll.EC_KEY_get0_group(_ec_key(key))
    if not group:
        fail("key has no group")
    order = cdll.EC_GROUP_get0_order(group)
    if not order:
        fail("group has no order")
    return _bn_to_int(order), int(cdll.EC_GROUP_get_curve_name(group))


def ec_private_in_range(key: Pkey) -> bool:
    """1 <= d < q, compared inside OpenSSL so the scalar never becomes a Python int."""
    cdll = lib()
    ec = _ec_key(key)
    d = cdll.EC_KEY_get0_private_key(ec)
    group = cdll.EC_KEY_get0_group(ec)
    if not d or not group:
        return False
    order = cdll.EC_GROUP_get0_order(group)
    return int(cdll.BN_is_zero(d)) == 0 and int(cdll.BN_cmp(d, order)) < 0


def ec_check_key(key: Pkey) -> bool:
    """EC_KEY_check_key: point valid and in the subgroup; with a private key, d in range and
    Q == d*G."""
    clear_errors()
    ok = int(lib().EC_KEY_check_key(_ec_key(key))) == 1
    discard_errors()
    return ok

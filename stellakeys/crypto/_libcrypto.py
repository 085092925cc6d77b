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

* Every OpenSSL function is declared once, with argtypes and restype, in one table per family,
  and called only through a typed wrapper below it, so mypy sees real types and a wrong argument
  fails in Python instead of corrupting memory.
* Opaque pointers are ``c_void_p`` (Python ``int``); a NULL result is ``None``.
* Every operation clears the thread's OpenSSL error queue first and drains it on failure into
  the exception message. OpenSSL's error strings never contain key material; callers that must
  be vague (wrong passphrase) discard them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from stellakeys.errors import BackendUnavailableError, StellaKeysError

_P = ctypes.c_void_p
_INT = ctypes.c_int
_UINT = ctypes.c_uint
_ULONG = ctypes.c_ulong
_SIZE = ctypes.c_size_t
_CHARP = ctypes.c_char_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_UCHARPP = ctypes.POINTER(ctypes.c_char_p)

_Signature = tuple[str, Any, Sequence[Any]]

GOST_PACKAGE_HINT = "install Debian package libengine-gost-openssl"
LIBCRYPTO_HINT = "install the OpenSSL 3 runtime library (Debian package libssl3)"


class OpenSSLError(StellaKeysError):
    """An OpenSSL call failed; the message carries OpenSSL's own error strings."""


# --- loading ---------------------------------------------------------------------------------

_load_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_engine: int | None = None


def _candidates() -> tuple[str, ...]:
    # find_library consults ldconfig, so it follows the distribution's current soname. It may
    # name an OpenSSL 1.1 libcrypto on a machine that has both, and it finds nothing without
    # ldconfig; either way the exact OpenSSL 3 soname we were written against comes next.
    found = ctypes.util.find_library("crypto")
    return tuple(dict.fromkeys(name for name in (found, "libcrypto.so.3") if name))


def lib() -> ctypes.CDLL:
    """The declared libcrypto, loaded on first use."""
    global _lib
    if _lib is not None:
        return _lib
    with _load_lock:
        if _lib is None:
            _lib = _load()
    return _lib


def _load() -> ctypes.CDLL:
    problems: list[str] = []
    for name in _candidates():
        try:
            cdll = ctypes.CDLL(name)
            version = _declare(cdll)
        except (OSError, BackendUnavailableError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        if version >= 0x30000000:
            return cdll
        problems.append(f"{name} is OpenSSL {version:#x}, OpenSSL 3 is required")
    raise BackendUnavailableError(
        f"cannot load libcrypto ({'; '.join(problems)}); {LIBCRYPTO_HINT}"
    )


def _declare(cdll: ctypes.CDLL) -> int:
    """Attach argtypes/restype to every function we call; return OpenSSL_version_num()."""
    for table in _TABLES:
        for name, restype, argtypes in table:
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                raise BackendUnavailableError(
                    f"libcrypto lacks {name}; OpenSSL 3.0 or newer is required"
                ) from None
            fn.restype = restype
            fn.argtypes = list(argtypes)
    return int(cdll.OpenSSL_version_num())


def ensure_gost_engine() -> None:
    """Load and register the gost engine once per process, or raise BackendUnavailableError."""
    global _engine
    if _engine is not None:
        return
    cdll = lib()
    with _load_lock:
        if _engine is not None:
            return
        clear_errors()
        engine = cdll.ENGINE_by_id(b"gost")
        if not engine:
            detail = _drain()
            raise BackendUnavailableError(
                f"the OpenSSL gost engine is not available ({detail}); {GOST_PACKAGE_HINT}"
            )
        if cdll.ENGINE_init(engine) != 1:
            detail = _drain()
            cdll.ENGINE_free(engine)
            raise BackendUnavailableError(
                f"the OpenSSL gost engine failed to initialise ({detail}); {GOST_PACKAGE_HINT}"
            )
        # Default for its own algorithms only: the engine implements nothing but GOST, so
        # this does not reroute SM2, SM3 or AES. Ciphers are left out because we use none.
        methods = ENGINE_METHOD_PKEY_METHS | ENGINE_METHOD_PKEY_ASN1_METHS | ENGINE_METHOD_DIGESTS
        if cdll.ENGINE_set_default(engine, methods) != 1:
            detail = _drain()
            cdll.ENGINE_finish(engine)
            cdll.ENGINE_free(engine)
            raise BackendUnavailableError(
                f"cannot register the gost engine ({detail}); {GOST_PACKAGE_HINT}"
            )
        # Keep the functional reference (from ENGINE_init) for the life of the process; the
        # structural one from ENGINE_by_id is no longer needed.
        cdll.ENGINE_free(engine)
        _engine = int(engine)


# --- errors (ERR_*) --------------------------------------------------------------------------

_ERR: list[_Signature] = [
    ("OpenSSL_version_num", _ULONG, []),
    ("ERR_get_error", _ULONG, []),
    ("ERR_error_string_n", None, [_ULONG, _CHARP, _SIZE]),
    ("ERR_clear_error", None, []),
]


def clear_errors() -> None:
    lib().ERR_clear_error()


def _drain() -> str:
    """Empty this thread's error queue into one line (OpenSSL's queue is per thread)."""
    cdll = lib()
    messages: list[str] = []
    while True:
        code = int(cdll.ERR_get_error())
        if code == 0:
            break
        buf = ctypes.create_string_buffer(256)
        cdll.ERR_error_string_n(code, buf, len(buf))
        messages.append(buf.value.decode("ascii", "replace"))
    return "; ".join(messages) or "no OpenSSL error reported"


def discard_errors() -> None:
    """Empty the error queue without reporting it (for deliberately vague failures)."""
    _drain()


def fail(message: str, exc_type: type[Exception] = OpenSSLError) -> NoReturn:
    """Raise ``exc_type`` with ``message`` and the drained OpenSSL error queue."""
    raise exc_type(f"{message}: {_drain()}")


def _check(ok: int, message: str) -> None:
    if ok != 1:
        fail(message)


# --- objects (OBJ_*) -------------------------------------------------------------------------

_OBJ: list[_Signature] = [
    ("OBJ_txt2nid", _INT, [_CHARP]),
    ("OBJ_obj2txt", _INT, [_CHARP, _INT, _P, _INT]),
    ("OBJ_nid2obj", _P, [_INT]),
]


def nid_of_oid(oid: str) -> int:
    """The NID of a dotted OID, 0 if OpenSSL (with the engines loaded so far) does not know it."""
    return int(lib().OBJ_txt2nid(oid.encode("ascii")))


def _oid_text(obj: int) -> str:
    buf = ctypes.create_string_buffer(128)
    n = int(lib().OBJ_obj2txt(buf, len(buf), obj, 1))
    if n <= 0 or n >= len(buf):
        fail("cannot print an OID")
    return buf.value.decode("ascii")


def oid_of_nid(nid: int) -> str:
    obj = lib().OBJ_nid2obj(nid)
    if not obj:
        fail(f"unknown NID {nid}")
    return _oid_text(obj)


# --- engine (ENGINE_*) -----------------------------------------------------------------------

ENGINE_METHOD_DIGESTS = 0x0040
ENGINE_METHOD_PKEY_METHS = 0x0200
ENGINE_METHOD_PKEY_ASN1_METHS = 0x0400

_ENGINE: list[_Signature] = [
    ("ENGINE_by_id", _P, [_CHARP]),
    ("ENGINE_init", _INT, [_P]),
    ("ENGINE_finish", _INT, [_P]),
    ("ENGINE_free", _INT, [_P]),
    ("ENGINE_set_default", _INT, [_P, _UINT]),
]


# --- memory BIOs (BIO_*) ---------------------------------------------------------------------

_BIO_CTRL_INFO = 3  # BIO_get_mem_data() is a macro over BIO_ctrl(b, BIO_CTRL_INFO, 0, &ptr)

_BIO: list[_Signature] = [
    ("BIO_s_mem", _P, []),
    ("BIO_new", _P, [_P]),
    ("BIO_free", _INT, [_P]),
    ("BIO_ctrl", ctypes.c_long, [_P, _INT, ctypes.c_long, _P]),
]


def _read_mem_bio(bio: int) -> bytes:
    data = ctypes.c_void_p()
    length = int(lib().BIO_ctrl(bio, _BIO_CTRL_INFO, 0, ctypes.byref(data)))
    if length == 0:
        return b""
    if length < 0 or not data.value:
        fail("cannot read memory BIO")
    return ctypes.string_at(data.value, length)


# --- message digests (EVP_MD_*, EVP_Digest) --------------------------------------------------

_MD: list[_Signature] = [
    ("EVP_get_digestbyname", _P, [_CHARP]),
    ("EVP_MD_fetch", _P, [_P, _CHARP, _CHARP]),
    ("EVP_Digest", _INT, [_CHARP, _SIZE, _CHARP, ctypes.POINTER(_UINT), _P, _P]),
    ("EVP_MD_CTX_new", _P, []),
    ("EVP_MD_CTX_free", None, [_P]),
    ("EVP_MD_CTX_set_pkey_ctx", None, [_P, _P]),
]

_digests: dict[str, int] = {}


def digest_by_name(name: str) -> int:
    """An EVP_MD* that lives as long as the process (cached: lookups take a global lock).

    SM3 is fetched explicitly from the default provider. Streebog must be the engine's legacy
    EVP_MD: a key that lives in an engine only signs through the legacy digest path.
    """
    md = _digests.get(name)
    if md is not None:
        return md
    cdll = lib()
    clear_errors()
    if name.upper() == "SM3":
        ptr = cdll.EVP_MD_fetch(None, b"SM3", None)
    else:
        ptr = cdll.EVP_get_digestbyname(name.encode("ascii"))
    if not ptr:
        fail(f"digest {name} is not available")
    _digests[name] = int(ptr)
    return int(ptr)


def digest(name: str, data: bytes) -> bytes:
    """One-shot hash with an OpenSSL digest (used for Streebog, which hashlib lacks)."""
    md = digest_by_name(name)
    out = ctypes.create_string_buffer(64)
    outlen = _UINT(0)
    clear_errors()
    _check(lib().EVP_Digest(data, len(data), out, ctypes.byref(outlen), md, None), "EVP_Digest")
    return out.raw[: outlen.value]


# --- key objects (EVP_PKEY_*) and their ownership --------------------------------------------

_PKEY: list[_Signature] = [
    ("EVP_PKEY_free", None, [_P]),
    ("EVP_PKEY_get_id", _INT, [_P]),
    ("EVP_PKEY_is_a", _INT, [_P, _CHARP]),
    ("EVP_PKEY_get0", _P, [_P]),
]


def _free_pkey(ptr: int) -> None:
    # Called from a finalizer, possibly at interpreter exit: never raise.
    if _lib is not None:
        _lib.EVP_PKEY_free(ptr)


class Pkey:
    """Owns one ``EVP_PKEY*`` and frees it when the wrapper is collected.

    weakref.finalize rather than ``__del__``: it runs exactly once, also at interpreter exit,
    and never resurrects the object. The wrapper has no repr of its contents on purpose.
    """

    __slots__ = ("__weakref__", "_finalizer", "_ptr")

    def __init__(self, ptr: int) -> None:
        if not ptr:
            raise ValueError("NULL EVP_PKEY")
        self._ptr = int(ptr)
        self._finalizer = weakref.finalize(self, _free_pkey, self._ptr)

    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def type_id(self) -> int:
        return int(lib().EVP_PKEY_get_id(self._ptr))

    def is_a(self, name: str) -> bool:
        return int(lib().EVP_PKEY_is_a(self._ptr, name.encode("ascii"))) == 1

    def __repr__(self) -> str:
        return "<EVP_PKEY>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("native keys cannot be pickled")


# --- key contexts (EVP_PKEY_CTX_*): generation, checks, raw verify ---------------------------

_PKEY_CTX: list[_Signature] = [
    ("EVP_PKEY_CTX_new", _P, [_P, _P]),
    ("EVP_PKEY_CTX_new_id", _P, [_INT, _P]),
    ("EVP_PKEY_CTX_new_from_name", _P, [_P, _CHARP, _CHARP]),
    ("EVP_PKEY_CTX_free", None, [_P]),
    ("EVP_PKEY_CTX_ctrl_str", _INT, [_P, _CHARP, _CHARP]),
    ("EVP_PKEY_CTX_set1_id", _INT, [_P, _CHARP, _INT]),
    ("EVP_PKEY_keygen_init", _INT, [_P]),
    ("EVP_PKEY_keygen", _INT, [_P, _PP]),
    ("EVP_PKEY_check", _INT, [_P]),
    ("EVP_PKEY_public_check", _INT, [_P]),
    ("EVP_PKEY_verify_init", _INT, [_P]),
    ("EVP_PKEY_verify", _INT, [_P, _CHARP, _SIZE, _CHARP, _SIZE]),
]


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

_SIGN: list[_Signature] = [
    ("EVP_DigestSignInit", _INT, [_P, _PP, _P, _P, _P]),
    ("EVP_DigestSign", _INT, [_P, _CHARP, ctypes.POINTER(_SIZE), _CHARP, _SIZE]),
    ("EVP_DigestVerifyInit", _INT, [_P, _PP, _P, _P, _P]),
    ("EVP_DigestVerify", _INT, [_P, _CHARP, _SIZE, _CHARP, _SIZE]),
]


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

_ENCODE: list[_Signature] = [
    ("d2i_PUBKEY", _P, [_PP, _UCHARPP, ctypes.c_long]),
    ("i2d_PUBKEY", _INT, [_P, _UCHARPP]),
    ("d2i_X509_SIG", _P, [_PP, _UCHARPP, ctypes.c_long]),
    ("X509_SIG_free", None, [_P]),
    ("d2i_PKCS8_PRIV_KEY_INFO", _P, [_PP, _UCHARPP, ctypes.c_long]),
    ("PKCS8_PRIV_KEY_INFO_free", None, [_P]),
    ("PKCS8_decrypt", _P, [_P, _CHARP, _INT]),
    ("PKCS8_pkey_get0", _INT, [_PP, _UCHARPP, ctypes.POINTER(_INT), _PP, _P]),
    ("EVP_PKCS82PKEY", _P, [_P]),
    ("EVP_aes_256_cbc", _P, []),
    ("PEM_write_bio_PKCS8PrivateKey", _INT, [_P, _P, _P, _CHARP, _INT, _P, _P]),
]


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

_EC: list[_Signature] = [
    ("EC_KEY_check_key", _INT, [_P]),
    ("EC_KEY_get0_group", _P, [_P]),
    ("EC_KEY_get0_private_key", _P, [_P]),
    ("EC_GROUP_get0_order", _P, [_P]),
    ("EC_GROUP_get_curve_name", _INT, [_P]),
    ("BN_num_bits", _INT, [_P]),
    ("BN_bn2binpad", _INT, [_P, _CHARP, _INT]),
    ("BN_is_zero", _INT, [_P]),
    ("BN_cmp", _INT, [_P, _P]),
]


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


_TABLES: tuple[list[_Signature], ...] = (
    _ERR,
    _OBJ,
    _ENGINE,
    _BIO,
    _MD,
    _PKEY,
    _PKEY_CTX,
    _SIGN,
    _ENCODE,
    _EC,
)

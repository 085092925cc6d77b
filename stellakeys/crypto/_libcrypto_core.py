"""The ground floor of the libcrypto binding (:mod:`stellakeys.crypto._libcrypto` has the why):
the ctypes declarations of every OpenSSL function we call, lazy loading of libcrypto and the
gost engine, the error queue, object identifiers, memory BIOs, digests and owned ``EVP_PKEY*``.

Split out of ``_libcrypto.py`` in issue 16; that module re-exports every public name here and
adds key contexts, signing, encodings and EC internals. The declaration tables of those
families live here too (below) because :func:`lib` declares every function at load, so a
libcrypto that lacks one is refused up front rather than at first use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import weakref
from collections.abc import Sequence
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


# --- declarations of the families wrapped in _libcrypto.py ----------------------------------

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

_SIGN: list[_Signature] = [
    ("EVP_DigestSignInit", _INT, [_P, _PP, _P, _P, _P]),
    ("EVP_DigestSign", _INT, [_P, _CHARP, ctypes.POINTER(_SIZE), _CHARP, _SIZE]),
    ("EVP_DigestVerifyInit", _INT, [_P, _PP, _P, _P, _P]),
    ("EVP_DigestVerify", _INT, [_P, _CHARP, _SIZE, _CHARP, _SIZE]),
]

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

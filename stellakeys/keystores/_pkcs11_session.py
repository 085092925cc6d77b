"""PKCS#11 plumbing under :mod:`stellakeys.keystores.pkcs11`: key types and mechanisms, loading a
module, and one logged-in session per (module, token) per process.

Split out of ``pkcs11.py`` in issue 16; every name is re-exported there. Logs go to the
``stellakeys.keystores.pkcs11`` logger, as before the split.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stellakeys.crypto import PublicKey, get_algorithm
from stellakeys.errors import KeyStoreError
from stellakeys.keystores._secrets import Secret, SecretSource

try:
    import pkcs11
    from pkcs11 import KeyType, Mechanism
    from pkcs11 import exceptions as p11
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise KeyStoreError(
        "the PKCS#11 key store needs python-pkcs11: pip install 'stellakeys[pkcs11]'"
    ) from exc


__all__ = ["DEFAULT_MODULE", "MODULE_ENV"]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "STELLAKEYS_PKCS11_MODULE"

_log = logging.getLogger("stellakeys.keystores.pkcs11")  # the name before the split
_T = TypeVar("_T")


# --- algorithms --------------------------------------------------------------------------------


@attrs.frozen
class _Spec:
    algorithm_id: str
    key_type: KeyType
    gen_mechanism: Mechanism
    #: DER of CKA_EC_PARAMS as we write it; ``also`` lists other encodings tokens return.
    ec_params: bytes
    point_size: int  # bytes of the raw public point (uncompressed EC, or Ed25519's 32)
    also: tuple[bytes, ...] = ()
    hash_name: str | None = None  # hashed on the host for CKM_ECDSA
    combined: Mechanism | None = None  # CKM_ECDSA_SHAxxx, used only if CKM_ECDSA is missing
    scalar_size: int = 0


_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")  # OID prime256v1
_P384_PARAMS = bytes.fromhex("06052b81040022")  # OID secp384r1
_ED25519_OID = bytes.fromhex("06032b6570")  # OID id-Ed25519 (RFC 8410)
_ED25519_NAME = b"\x13\x0cedwards25519"  # PrintableString, the PKCS#11 3.0 alternative

_SPECS: dict[str, _Spec] = {
    s.algorithm_id: s
    for s in (
        _Spec(
            "ecdsa-p256-sha256",
            KeyType.EC,
            Mechanism.EC_KEY_PAIR_GEN,
            _P256_PARAMS,
            65,
            hash_name="sha256",
            combined=Mechanism.ECDSA_SHA256,
            scalar_size=32,
        ),
        _Spec(
            "ecdsa-p384-sha384",
            KeyType.EC,
            Mechanism.EC_KEY_PAIR_GEN,
            _P384_PARAMS,
            97,
            hash_name="sha384",
            combined=Mechanism.ECDSA_SHA384,
            scalar_size=48,
        ),
        _Spec(
            "ed25519",
            KeyType.EC_EDWARDS,
            Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            _ED25519_OID,
            32,
            also=(_ED25519_NAME,),
        ),
    )
}


def _spec_of(key_type: Any, ec_params: bytes) -> _Spec:
    for spec in _SPECS.values():
        if spec.key_type == key_type and ec_params in (spec.ec_params, *spec.also):
            return spec
    raise KeyStoreError(
        f"PKCS#11 key of type {key_type!r} with parameters {ec_params.hex()} "
        f"matches none of {', '.join(_SPECS)}"
    )


def _raw_point(value: bytes, size: int) -> bytes:
    """CKA_EC_POINT as the raw point: tokens return it DER-wrapped (the spec) or raw."""
    if len(value) == size + 2 and value[0] == 0x04 and value[1] == size:
        return value[2:]
    if len(value) == size:
        return value
    raise KeyStoreError(f"unexpected CKA_EC_POINT of {len(value)} bytes")


def _public_key(spec: _Spec, point: bytes) -> PublicKey:
    raw = _raw_point(point, spec.point_size)
    pyca: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    if spec.key_type == KeyType.EC_EDWARDS:
        pyca = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    else:
        curve = ec.SECP256R1() if spec.ec_params == _P256_PARAMS else ec.SECP384R1()
        pyca = ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)
    spki = pyca.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return get_algorithm(spec.algorithm_id).load_public_der(spki)


# --- one logged-in session per (module, token) per process ---------------------------------

# Errors after which the session (or the login) is gone, not the operation wrong: re-open once.
_SESSION_LOST: tuple[type[Exception], ...] = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
)

_PROCESS_KEY = secrets.token_bytes(32)


def _pin_tag(pin: str) -> bytes:
    return hmac.new(_PROCESS_KEY, pin.encode(), hashlib.sha256).digest()


class _TokenSession:
    """The shared, lock-guarded, logged-in session of one token, with a cache of key objects."""

    def __init__(self, token: Any, token_name: str) -> None:
        self.token = token
        self.token_name = token_name
        self.lock = threading.RLock()
        self.session: Any = None
        self.pin: Secret | None = None
        self.pin_tag: bytes | None = None
        self.users = 0
        #: CKA_ID -> private key object of the current session.
        self.private_keys: dict[bytes, Any] = {}
        self.mechanisms: set[Any] | None = None
        self.reopened = 0

    def _login(self) -> Any:
        assert self.pin is not None
        try:
            return self.token.open(rw=True, user_pin=self.pin.reveal())
        except p11.UserAlreadyLoggedIn:
            # Another session of this process logged in (PKCS#11 login is per application);
            # ours shares that login.
            return self.token.open(rw=True)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            pin, self.pin, self.pin_tag = self.pin, None, None
            raise KeyStoreError(
                f"wrong PIN for PKCS#11 token {self.token_name} (from {pin.origin})"
            ) from None
        except p11.PinLocked:
            raise KeyStoreError(
                f"the user PIN of PKCS#11 token {self.token_name} is locked"
            ) from None
        except p11.PKCS11Error as exc:
            raise KeyStoreError(
                f"cannot log in to PKCS#11 token {self.token_name}: {type(exc).__name__}"
            ) from None

    def authenticate(self, source: SecretSource) -> None:
        """Log in with ``source``'s PIN, or check it against the PIN already in use."""
        with self.lock:
            if self.pin_tag is not None:
                secret = source.read()
                if not hmac.compare_digest(_pin_tag(secret.reveal()), self.pin_tag):
                    raise KeyStoreError(
                        f"wrong PIN for PKCS#11 token {self.token_name} (from {secret.origin}): "
                        "it differs from the PIN this process logged in with"
                    )
                return
            self.pin = source.read()
            self.session = self._login()
            self.pin_tag = _pin_tag(self.pin.reveal())

    def drop(self) -> None:
        with self.lock:
            session, self.session = self.session, None
            self.private_keys.clear()
            if session is not None:
                # It may be gone already: that is usually why we are dropping it.
                with contextlib.suppress(p11.PKCS11Error):
                    session.close()

    def call(self, what: str, operation: Callable[[Any], _T]) -> _T:
        """Run ``operation(session)`` under the lock, re-opening a lost session once."""
        with self.lock:
            for attempt in (1, 2):
                if self.session is None:
                    if self.pin is None:
                        raise KeyStoreError(f"PKCS#11 token {self.token_name}: not logged in")
                    self.session = self._login()
                    self.reopened += 1
                try:
                    return operation(self.session)
                except _SESSION_LOST as exc:
                    if attempt == 2:
                        raise KeyStoreError(
                            f"PKCS#11 {what} on token {self.token_name} failed twice: "
                            f"{type(exc).__name__}"
                        ) from None
                    _log.warning(
                        "PKCS#11 session on token %s lost (%s); re-opening",
                        self.token_name,
                        type(exc).__name__,
                    )
                    self.drop()
                except p11.PKCS11Error as exc:
                    raise KeyStoreError(
                        f"PKCS#11 {what} on token {self.token_name} failed: {type(exc).__name__}"
                    ) from None
            raise AssertionError("unreachable")


_SESSIONS: dict[tuple[str, str], _TokenSession] = {}
_SESSIONS_LOCK = threading.Lock()


_MODULES: dict[str, Any] = {}


def _load_module(path: str) -> Any:
    # One C_Initialize per module and process: older python-pkcs11 releases refuse a second
    # lib() for the same path, newer ones cache it; keeping our own table works with both.
    try:
        with _SESSIONS_LOCK:
            if path not in _MODULES:
                _MODULES[path] = pkcs11.lib(path)
            return _MODULES[path]
    except Exception as exc:
        raise KeyStoreError(
            f"cannot load PKCS#11 module {path}: {exc} (set ${MODULE_ENV} or module-path; for "
            "SoftHSM2 install Debian package softhsm2)"
        ) from None


def _describe(token: Any) -> str:
    serial = bytes(token.serial).decode("ascii", "replace").strip()
    return f"{token.label.strip()!r} (serial {serial}, slot {token.slot.slot_id})"

"""PKCS#11 key store (HSMs, smart cards, SoftHSM2) through python-pkcs11.

Store URIs select a token and optionally the module:

* RFC 7512: ``pkcs11:token=<label>``, ``pkcs11:serial=<serial>``, ``pkcs11:slot-id=<n>``
  (attributes combine), query ``?module-path=/path/lib.so`` and ``?pin-source=/path/file``;
* the runbook's form: ``hsm://pkcs11/slot/<slot id>``, ``hsm://pkcs11/token/<label>``,
  ``hsm://pkcs11/serial/<serial>``, with the same query attributes;
* no selector at all (``pkcs11:``, ``hsm://pkcs11``) when exactly one initialized token exists.

``slot`` is the PKCS#11 slot *id* (as in RFC 7512 ``slot-id`` and ``pkcs11-tool --slot``),
not an index; SoftHSM2 gives an initialized token a large id, shown by
``softhsm2-util --show-slots``.

Generated keys are pinned by a random 16-byte ``CKA_ID`` on the token of a given serial::

    pkcs11:token=T;serial=0080e5061e7018fb;object=key-2025-prod;id=%3c%a1...;type=private

``object`` (``CKA_LABEL``) is the key id and is matched too, but the random ``CKA_ID`` is what
stops a later key with the same label from taking over.

Module: URI ``module-path``, else ``$STELLAKEYS_PKCS11_MODULE``, else SoftHSM2's Debian path.
PIN: URI ``pin-source`` (a file), else ``$STELLAKEYS_PKCS11_PIN``,
``$STELLAKEYS_PKCS11_PIN_FILE``, or the prompt. ``pin-value`` is refused: a PIN in a URI ends
up in config files, key records and logs.

Sessions: PKCS#11 login state belongs to the whole process per token, and python-pkcs11
sessions are not thread-safe. So every store object on the same (module, token) in a process
shares one logged-in read-write session behind a lock, and re-opens it (logging in again with
the PIN kept in memory) when the token reports the session gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, final

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stellakeys.crypto import Algorithm, PublicKey, get_algorithm
from stellakeys.errors import KeyIdentityError, KeyStoreError
from stellakeys.keystores._secrets import Secret, SecretSource
from stellakeys.keystores.ports import FoundKey, KeyStoreContext, PreparedKey
from stellakeys.keystores.uris import PIN_ENV, PIN_FILE_ENV, Pkcs11Uri, pct

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag
    from pkcs11 import exceptions as p11
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise KeyStoreError(
        "the PKCS#11 key store needs python-pkcs11: pip install 'stellakeys[pkcs11]'"
    ) from exc

__all__ = ["Pkcs11KeyHandle", "Pkcs11KeyStore", "Pkcs11Uri"]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "STELLAKEYS_PKCS11_MODULE"

_log = logging.getLogger(__name__)
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


# --- URIs --------------------------------------------------------------------------------------


# The parser lives in stellakeys.keystores.uris (one parser for every key store URI, usable
# without python-pkcs11); re-exported here for existing callers.
_pct = pct


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


# --- the store ---------------------------------------------------------------------------------


@final
class Pkcs11KeyHandle:
    """A private key object on a token; signing happens in the token."""

    __slots__ = ("_store", "algorithm", "cka_id", "key_id", "public", "uri")

    def __init__(
        self,
        store: Pkcs11KeyStore,
        uri: str,
        key_id: str,
        cka_id: bytes,
        algorithm: Algorithm,
        public: PublicKey,
    ) -> None:
        self._store = store
        self.uri = uri
        self.key_id = key_id
        self.cka_id = cka_id
        self.algorithm = algorithm
        self.public = public

    def sign(self, data: bytes, /) -> bytes:
        return self._store._sign(self, data)

    def public_key(self) -> PublicKey:
        return self.public

    def __repr__(self) -> str:
        return f"<Pkcs11KeyHandle {self.uri}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key handles cannot be pickled")


class Pkcs11KeyStore:
    """Keys generated inside one PKCS#11 token; they never leave it.

    ``Pkcs11KeyStore(module_path, Pkcs11Uri(token="T"), pin_source)`` for embedding;
    ``from_uri`` for the URI forms in the module docstring.
    """

    def __init__(
        self,
        module_path: str,
        selector: Pkcs11Uri,
        pin: SecretSource,
        *,
        module_in_uri: bool = False,
    ) -> None:
        self.module_path = module_path
        self.selector = selector
        self._pin_source = pin
        self._module_in_uri = module_in_uri
        self._shared: _TokenSession | None = None
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, context: KeyStoreContext) -> Pkcs11KeyStore:
        parsed = Pkcs11Uri.parse(uri)
        module = parsed.module_path or os.environ.get(MODULE_ENV) or DEFAULT_MODULE
        what = "PIN for PKCS#11 token " + (
            repr(parsed.token)
            if parsed.token
            else f"serial {parsed.serial}"
            if parsed.serial
            else f"in slot {parsed.slot_id}"
            if parsed.slot_id is not None
            else "(the only one)"
        )
        source = SecretSource(
            what, PIN_ENV, PIN_FILE_ENV, prompt=context.prompt, file=parsed.pin_source
        )
        # Only token selection matters for the store; a pinned URI also names a key.
        selector = attrs.evolve(parsed, object=None, id=None, type=None)
        return cls(module, selector, source, module_in_uri=parsed.module_path is not None)

    def __repr__(self) -> str:
        return f"<Pkcs11KeyStore {self.module_path} {self.selector}>"

    # --- token and session ----------------------------------------------------------------

    def _find_token(self) -> Any:
        lib = _load_module(self.module_path)
        sel = self.selector
        candidates = []
        for slot in lib.get_slots(token_present=True):
            token = slot.get_token()
            if not token.flags & TokenFlag.TOKEN_INITIALIZED:
                continue
            if sel.slot_id is not None and slot.slot_id != sel.slot_id:
                continue
            if sel.token is not None and token.label.strip() != sel.token:
                continue
            serial = bytes(token.serial).decode("ascii", "replace").strip()
            if sel.serial is not None and serial != sel.serial:
                continue
            candidates.append(token)
        if len(candidates) == 1:
            return candidates[0]
        every = [
            _describe(s.get_token())
            for s in lib.get_slots(token_present=True)
            if s.get_token().flags & TokenFlag.TOKEN_INITIALIZED
        ]
        wanted = ", ".join(
            f"{k}={v}"
            for k, v in (("token", sel.token), ("serial", sel.serial), ("slot-id", sel.slot_id))
            if v is not None
        )
        problem = "no" if not candidates else "more than one"
        raise KeyStoreError(
            f"{problem} initialized PKCS#11 token matches {wanted or 'no selector'} in "
            f"{self.module_path}; tokens: {', '.join(every) or 'none'}"
        )

    def _session(self) -> _TokenSession:
        with self._lock:
            if self._closed:
                raise KeyStoreError("this PKCS#11 key store is closed")
            if self._shared is not None:
                return self._shared
            token = self._find_token()
            serial = bytes(token.serial).decode("ascii", "replace").strip()
            key = (os.path.realpath(self.module_path), serial)
            with _SESSIONS_LOCK:
                shared = _SESSIONS.get(key)
                if shared is None:
                    shared = _SESSIONS[key] = _TokenSession(token, _describe(token))
                shared.users += 1
            try:
                shared.authenticate(self._pin_source)
            except BaseException:
                self._release(shared)
                raise
            self._shared = shared
            return shared

    def _release(self, shared: _TokenSession) -> None:
        with _SESSIONS_LOCK:
            shared.users -= 1
            if shared.users == 0:
                for key, value in list(_SESSIONS.items()):
                    if value is shared:
                        del _SESSIONS[key]
                shared.drop()

    def close(self) -> None:
        with self._lock:
            shared, self._shared = self._shared, None
            self._closed = True
        if shared is not None:
            self._release(shared)

    # --- the port -------------------------------------------------------------------------

    def _pinned_uri(self, shared: _TokenSession, key_id: str, cka_id: bytes) -> str:
        token = shared.token
        serial = bytes(token.serial).decode("ascii", "replace").strip()
        uri = (
            f"pkcs11:token={_pct(token.label.strip())};serial={_pct(serial)};"
            f"object={_pct(key_id)};id={''.join(f'%{b:02x}' for b in cka_id)};type=private"
        )
        if self._module_in_uri:
            uri += f"?module-path={_pct(self.module_path)}"
        return uri

    def generate(
        self,
        algorithm: Algorithm,
        key_id: str,
        *,
        prepared: Callable[[PreparedKey], None] | None = None,
    ) -> Pkcs11KeyHandle:
        spec = _SPECS.get(algorithm.id)
        if spec is None:
            raise KeyStoreError(
                f"the PKCS#11 key store cannot generate {algorithm.id!r}; supported: "
                + ", ".join(_SPECS)
            )
        if not key_id or len(key_id) > 128 or not key_id.isprintable():
            raise KeyStoreError(f"invalid key id {key_id!r}: 1-128 printable characters")
        shared = self._session()
        cka_id = secrets.token_bytes(16)

        def create(session: Any) -> bytes:
            taken = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: key_id}
                )
            )
            if taken:
                raise KeyStoreError(
                    f"key {key_id!r} already exists on PKCS#11 token {shared.token_name}"
                )
            public, private = session.generate_keypair(
                spec.key_type,
                mechanism=spec.gen_mechanism,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.VERIFY: True,
                    Attribute.EC_PARAMS: spec.ec_params,
                    Attribute.ID: cka_id,
                    Attribute.LABEL: key_id,
                },
                # Non-extractable and sensitive: the key can sign, never be exported, not even
                # wrapped. CKA_DERIVE off: a signing key is not an ECDH key.
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DERIVE: False,
                    Attribute.ID: cka_id,
                    Attribute.LABEL: key_id,
                },
            )
            shared.private_keys[cka_id] = private
            point: bytes = public[Attribute.EC_POINT]
            return point

        if prepared is not None:
            # The random CKA_ID is fixed before the key exists: the caller records the pinned
            # URI (its intent), so a key left by a crash is recognised by it.
            prepared(PreparedKey(self._pinned_uri(shared, key_id, cka_id), None))
        point = shared.call("key generation", create)
        public_key = _public_key(spec, point)
        uri = self._pinned_uri(shared, key_id, cka_id)
        return Pkcs11KeyHandle(self, uri, key_id, cka_id, public_key.algorithm, public_key)

    def open(self, uri: str) -> Pkcs11KeyHandle:
        pinned = Pkcs11Uri.parse(uri)
        if pinned.id is None:
            raise KeyStoreError(
                f"not a pinned PKCS#11 key URI: {uri!r}; it needs the id attribute "
                "(CKA_ID) as returned by generate()"
            )
        if pinned.type not in (None, "private"):
            raise KeyStoreError(f"{uri}: type={pinned.type} is not a private key")
        shared = self._session()
        token = shared.token
        serial = bytes(token.serial).decode("ascii", "replace").strip()
        if (pinned.serial is not None and pinned.serial != serial) or (
            pinned.token is not None and pinned.token != token.label.strip()
        ):
            raise KeyStoreError(f"{uri} names another token than {shared.token_name}")
        cka_id = pinned.id

        def find(session: Any) -> tuple[str, Any, bytes, bytes]:
            template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: cka_id}
            if pinned.object is not None:
                template[Attribute.LABEL] = pinned.object
            privates = list(session.get_objects(template))
            if len(privates) != 1:
                problem = "no" if not privates else f"{len(privates)}"
                raise KeyStoreError(f"{problem} private key matches {uri} on {shared.token_name}")
            publics = list(
                session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: cka_id})
            )
            if len(publics) != 1:
                raise KeyStoreError(f"no unique public key object for {uri}")
            private = privates[0]
            shared.private_keys[cka_id] = private
            label: str = private[Attribute.LABEL]
            return (
                label,
                private[Attribute.KEY_TYPE],
                bytes(publics[0][Attribute.EC_PARAMS]),
                bytes(publics[0][Attribute.EC_POINT]),
            )

        label, key_type, params, point = shared.call("key lookup", find)
        spec = _spec_of(key_type, params)
        public_key = _public_key(spec, point)
        return Pkcs11KeyHandle(self, uri, label, cka_id, public_key.algorithm, public_key)

    def _found(self, session: Any, shared: _TokenSession, private: Any) -> FoundKey:
        cka_id = bytes(private[Attribute.ID])
        label: str = private[Attribute.LABEL]
        publics = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: cka_id})
        )
        if len(publics) != 1:
            raise KeyStoreError(
                f"no unique public key object for key {label!r} on {shared.token_name}"
            )
        spec = _spec_of(private[Attribute.KEY_TYPE], bytes(publics[0][Attribute.EC_PARAMS]))
        public = _public_key(spec, bytes(publics[0][Attribute.EC_POINT]))
        return FoundKey(label, self._pinned_uri(shared, label, cka_id), public)

    def find(self, key_id: str) -> FoundKey | None:
        """The private key labelled ``key_id`` on the token (with its public key), or None."""
        shared = self._session()

        def look(session: Any) -> FoundKey | None:
            template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: key_id}
            privates = list(session.get_objects(template))
            if not privates:
                return None
            if len(privates) > 1:
                raise KeyStoreError(
                    f"{len(privates)} private keys are labelled {key_id!r} on {shared.token_name}"
                )
            return self._found(session, shared, privates[0])

        return shared.call("key lookup", look)

    def list_keys(self) -> list[FoundKey]:
        shared = self._session()

        def every(session: Any) -> list[FoundKey]:
            privates = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            return [self._found(session, shared, p) for p in privates]

        return sorted(shared.call("key listing", every), key=lambda f: f.key_id)

    def _sign(self, handle: Pkcs11KeyHandle, data: bytes) -> bytes:
        spec = _SPECS[handle.algorithm.id]
        shared = self._session()

        def sign(session: Any) -> bytes:
            private = shared.private_keys.get(handle.cka_id)
            if private is None:
                private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=handle.cka_id)
                # A new lookup (new session, or after the token was re-initialised): the object
                # under this CKA_ID must still be the key the handle was opened on.
                found = self._found(session, shared, private)
                if not hmac.compare_digest(found.public_key.fingerprint, handle.public.fingerprint):
                    raise KeyIdentityError(
                        handle.key_id,
                        handle.public.fingerprint,
                        found.public_key.fingerprint,
                        f"PKCS#11 token {shared.token_name}",
                    )
                shared.private_keys[handle.cka_id] = private
            if spec.hash_name is None:
                raw: bytes = private.sign(data, mechanism=Mechanism.EDDSA)
                return raw
            if shared.mechanisms is None:
                shared.mechanisms = set(shared.token.slot.get_mechanisms())
            # Hash on the host and sign the digest with CKM_ECDSA: identical signatures, and
            # 32-48 bytes cross the PKCS#11 boundary instead of the message. Only a token without
            # raw CKM_ECDSA gets the message and a combined mechanism.
            if Mechanism.ECDSA in shared.mechanisms or spec.combined not in shared.mechanisms:
                digest = hashlib.new(spec.hash_name, data).digest()
                raw = private.sign(digest, mechanism=Mechanism.ECDSA)
            else:
                raw = private.sign(data, mechanism=spec.combined)
            return raw

        raw = shared.call("signing", sign)
        if spec.hash_name is None:
            return raw
        # PKCS#11 returns r || s, fixed width; our wire format (and OpenSSL's) is DER.
        if len(raw) != 2 * spec.scalar_size:
            raise KeyStoreError(f"token returned a {len(raw)}-byte ECDSA signature")
        r = int.from_bytes(raw[: spec.scalar_size], "big")
        s = int.from_bytes(raw[spec.scalar_size :], "big")
        return encode_dss_signature(r, s)

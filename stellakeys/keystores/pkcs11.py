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

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any, NoReturn, final

import attrs
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stellakeys.crypto import Algorithm, PublicKey
from stellakeys.errors import KeyIdentityError, KeyStoreError
from stellakeys.keystores._secrets import SecretSource
from stellakeys.keystores.ports import FoundKey, KeyStoreContext, PreparedKey
from stellakeys.keystores.uris import PIN_ENV, PIN_FILE_ENV, Pkcs11Uri, pct

try:
    from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass, TokenFlag
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise KeyStoreError(
        "the PKCS#11 key store needs python-pkcs11: pip install 'stellakeys[pkcs11]'"
    ) from exc

from stellakeys.keystores._pkcs11_session import (  # re-exported: moved in issue 16
    _SESSIONS,
    _SESSIONS_LOCK,
    _SPECS,
    DEFAULT_MODULE,
    MODULE_ENV,
    _describe,
    _load_module,
    _public_key,
    _spec_of,
    _TokenSession,
)

__all__ = [
    "DEFAULT_MODULE",
    "MODULE_ENV",
    "Pkcs11KeyHandle",
    "Pkcs11KeyStore",
    "Pkcs11Uri",
]

# --- URIs --------------------------------------------------------------------------------------


# The parser lives in stellakeys.keystores.uris (one parser for every key store URI, usable
# without python-pkcs11); re-exported here for existing callers.
_pct = pct


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

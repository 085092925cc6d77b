"""Key stores behind one port, chosen by the scheme of a URI.

>>> from pathlib import Path
>>> from stellakeys.keystores import KeyStoreContext, open_key_store
>>> store = open_key_store("software://default", KeyStoreContext(home=Path("/tmp/sk")))

Built-in schemes:

* ``software://<name>`` -- encrypted PKCS#8 files under ``<home>/keys/<name>/``;
* ``hsm://pkcs11/...`` and RFC 7512 ``pkcs11:...`` -- a PKCS#11 token (python-pkcs11);
* ``kms://aws/...``, a KMS key ARN or ``alias/<name>`` -- AWS KMS (boto3).

URIs are parsed by :mod:`stellakeys.keystores.uris`, the one parser of every built-in form.

Third-party stores register a factory (``(uri, context) -> KeyStore``) in the entry point
group ``stellakeys.keystores`` under their scheme name. The built-ins are registered there too
(so ``importlib.metadata`` lists every store), but a plugin cannot take over a built-in scheme:
the built-in table is consulted first, because a package that silently replaced
``software`` would see every passphrase.

Heavy dependencies (python-pkcs11, boto3) are imported only when their store is opened.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from stellakeys.errors import KeyStoreError
from stellakeys.keystores._secrets import Secret, SecretSource
from stellakeys.keystores.ports import KeyHandle, KeyStore, KeyStoreContext, KeyStoreFactory

__all__ = [
    "ENTRY_POINT_GROUP",
    "KeyHandle",
    "KeyStore",
    "KeyStoreContext",
    "KeyStoreFactory",
    "Secret",
    "SecretSource",
    "known_schemes",
    "open_key_store",
    "scheme_of",
]

ENTRY_POINT_GROUP = "stellakeys.keystores"

_log = logging.getLogger(__name__)

#: scheme -> "module:qualified.factory", loaded lazily so that importing this package never
#: imports python-pkcs11 or boto3.
_BUILTINS: dict[str, str] = {
    "software": "stellakeys.keystores.software:SoftwareKeyStore.from_uri",
    "hsm": "stellakeys.keystores.pkcs11:Pkcs11KeyStore.from_uri",
    "pkcs11": "stellakeys.keystores.pkcs11:Pkcs11KeyStore.from_uri",
    "kms": "stellakeys.keystores.kms:KmsKeyStore.from_uri",
}

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def scheme_of(uri: str) -> str:
    """The lower-cased scheme of a key store URI (``pkcs11`` for ``pkcs11:token=T``)."""
    match = _SCHEME.match(uri) if isinstance(uri, str) else None
    if match is None:
        raise KeyStoreError(
            f"not a key store URI: {uri!r}; expected <scheme>:..., e.g. software://default"
        )
    return match.group(1).lower()


def _plugins() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        name = ep.name.lower()
        if name in _BUILTINS:
            if ep.value.replace(" ", "") != _BUILTINS[name]:
                _log.warning(
                    "ignoring entry point %s = %s: %r is a built-in key store scheme",
                    ep.name,
                    ep.value,
                    name,
                )
            continue
        found.setdefault(name, ep)
    return found


def known_schemes() -> list[str]:
    """Every scheme :func:`open_key_store` accepts: built-ins and installed plugins."""
    return sorted({*_BUILTINS, *_plugins()})


def _load_builtin(target: str) -> KeyStoreFactory:
    module_name, _, qualname = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return cast(KeyStoreFactory, obj)


def _factory(scheme: str) -> KeyStoreFactory:
    if scheme in _BUILTINS:
        return _load_builtin(_BUILTINS[scheme])
    ep = _plugins().get(scheme)
    if ep is None:
        raise KeyStoreError(
            f"unknown key store scheme {scheme!r}; known: {', '.join(known_schemes())} "
            f"(third-party stores register in the {ENTRY_POINT_GROUP!r} entry point group)"
        )
    try:
        loaded: object = ep.load()
    except Exception as exc:
        raise KeyStoreError(
            f"key store plugin {ep.name} = {ep.value} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(loaded):
        raise KeyStoreError(f"key store plugin {ep.name} = {ep.value} is not callable")
    return cast(KeyStoreFactory, loaded)


def open_key_store(uri: str, context: KeyStoreContext) -> KeyStore:
    """The key store a URI names: a profile's ``keyStore`` or a key's pinned URI.

    The store is opened, not necessarily connected: stores log in or ask for a passphrase
    only when a key is generated or opened.
    """
    from stellakeys.keystores.uris import canonical_uri

    uri = canonical_uri(uri)  # a bare KMS ARN or alias/<name> is kms://aws/key/...
    factory: Callable[[str, KeyStoreContext], object] = _factory(scheme_of(uri))
    store = factory(uri, context)
    for method in ("generate", "open", "close"):
        if not callable(getattr(store, method, None)):
            raise KeyStoreError(
                f"the {scheme_of(uri)!r} key store factory returned {type(store).__name__}, "
                f"which lacks {method}()"
            )
    return cast(KeyStore, store)

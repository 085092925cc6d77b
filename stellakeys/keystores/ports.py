"""The KeyStore port: where private keys live and are used, addressed by URI.

A key store generates keys and signs with them; it never hands out private key material. Each
generated key is addressed by a *pinned* URI naming the exact key version (a KMS key id, not
an alias; an HSM object id, not a label that a later key could take over), and its public key
is recorded beside it, so verification never needs the key store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs

from stellakeys.crypto import Algorithm, PublicKey

__all__ = ["KeyHandle", "KeyStore", "KeyStoreContext", "KeyStoreFactory"]


class KeyHandle(Protocol):
    """A usable key inside a store; satisfies :class:`stellakeys.dsse.Signer`."""

    @property
    def uri(self) -> str:
        """The pinned URI of this exact key version."""
        ...

    def sign(self, data: bytes, /) -> bytes: ...

    def public_key(self) -> PublicKey: ...


class KeyStore(Protocol):
    def generate(self, algorithm: Algorithm, key_id: str) -> KeyHandle:
        """A new key of ``algorithm``, labelled ``key_id`` where the store has labels."""
        ...

    def open(self, uri: str) -> KeyHandle:
        """The key at a pinned URI returned by :meth:`generate`. KeyStoreError if missing."""
        ...

    def close(self) -> None: ...


@attrs.frozen
class KeyStoreContext:
    """What a key store may need from its host: where the home is, how to ask for secrets."""

    home: Path
    #: Asks the user for a secret (passphrase, PIN) with the given prompt; None when there is
    #: no terminal, in which case stores must rely on environment variables or files.
    prompt: Callable[[str], str] | None = None


class KeyStoreFactory(Protocol):
    """Entry point ``stellakeys.keystores``: a scheme name mapped to one of these."""

    def __call__(self, uri: str, context: KeyStoreContext) -> KeyStore: ...

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

__all__ = [
    "FoundKey",
    "KeyHandle",
    "KeyStore",
    "KeyStoreContext",
    "KeyStoreFactory",
    "PreparedKey",
    "ResumableKeyStore",
]


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
class PreparedKey:
    """What a store knows about a key it is about to make persistent (crash consistency).

    The facade records it in the key's intent before the store makes the key durable, so a
    key left behind by a crash can later be recognised as the one this intent made: by its
    public key (software: generated in memory first) or by its pinned URI (PKCS#11: the
    random CKA_ID is chosen first; KMS: the key exists before its ``stellakeys/<id>`` alias).
    """

    pinned_uri: str | None = None
    public_key: PublicKey | None = None


@attrs.frozen
class FoundKey:
    """A key a store holds under a key id, as seen without using it (public half only)."""

    key_id: str
    pinned_uri: str
    public_key: PublicKey


class ResumableKeyStore(KeyStore, Protocol):
    """Optional extension of :class:`KeyStore` that lets an interrupted generate be resumed.

    The built-in stores implement it; a store without it still works, but a key left by a
    crash then blocks its key id until removed by hand.
    """

    def generate(
        self,
        algorithm: Algorithm,
        key_id: str,
        *,
        prepared: Callable[[PreparedKey], None] | None = None,
    ) -> KeyHandle:
        """As :meth:`KeyStore.generate`; ``prepared`` is called before the key is durable."""
        ...

    def find(self, key_id: str) -> FoundKey | None:
        """The key held under ``key_id``, or None. Needs no passphrase where possible."""
        ...

    def list_keys(self) -> list[FoundKey]:
        """Every key this store holds under a stellakeys key id (``stellaops doctor``)."""
        ...


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

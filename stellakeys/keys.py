"""Key records: what stellakeys knows about a key, public half only."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from stellakeys.crypto import PublicKey, load_public_key_pem
from stellakeys.times import format_time

__all__ = ["KeyOrigin", "KeyRecord", "public_key_of_pem"]


@functools.lru_cache(maxsize=4096)
def public_key_of_pem(pem: str) -> PublicKey:
    """Parse a PEM once per process: verification parses the same few keys over and over."""
    return load_public_key_pem(pem)


class KeyOrigin:
    GENERATED = "generated"
    IMPORTED = "imported"


@attrs.frozen
class KeyRecord:
    """A signing key known to stellakeys. Never deleted; revocation lives in anchor history.

    ``key_store_uri`` is pinned to the exact key version in its store (for example
    ``kms://aws/key/<key-id>`` rather than an alias), and ``public_key_pem`` sits beside it, so
    verification never needs the key store.
    """

    key_id: str
    algorithm: str
    public_key_pem: str
    fingerprint: str
    created_at: datetime
    profile: str | None = None
    key_store_uri: str | None = None
    origin: str = KeyOrigin.GENERATED
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def public_key(self) -> PublicKey:
        return public_key_of_pem(self.public_key_pem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "algorithm": self.algorithm,
            "fingerprint": self.fingerprint,
            "profile": self.profile,
            "keyStore": self.key_store_uri,
            "origin": self.origin,
            "createdAt": format_time(self.created_at),
            "publicKey": self.public_key_pem,
            "metadata": dict(self.metadata),
        }

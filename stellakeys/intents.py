"""Key lifecycle intents: what a ``generate`` or ``rotate`` set out to do, recorded in the store
*before* the key store is touched, and removed in the transaction that records the key.

An intent outliving its process is the trace of a crash between the key store and the
database. Re-running the same operation resumes it: a key the key store already holds under
the key id is adopted only if it is the key the intent prepared (same public key, or same
pinned URI where the store fixes the URI before making the key), and refused otherwise.
See docs/decisions/0016-key-identity-and-crash-consistency.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from stellakeys.times import format_time

__all__ = ["INTENT_GENERATE", "INTENT_ROTATE", "KeyIntent"]

INTENT_GENERATE = "generate"
INTENT_ROTATE = "rotate"


@attrs.frozen
class KeyIntent:
    """One unfinished key creation. ``params`` are the operation's other arguments (JSON), so
    ``stellaops doctor --repair`` can finish it; the identity fields are filled in by the key
    store just before it makes the key persistent."""

    key_id: str
    operation: str
    profile: str
    algorithm: str
    key_store: str
    created_at: datetime
    params: Mapping[str, Any] = attrs.field(factory=dict)
    #: Public key (PEM) and fingerprint of the key being made, when the store knows it first.
    public_key_pem: str | None = None
    fingerprint: str | None = None
    #: The pinned URI the key will have, when the store fixes it first (PKCS#11 CKA_ID).
    key_store_uri: str | None = None

    def same_request(self, other: KeyIntent) -> bool:
        """Whether ``other`` asks for the same thing (a re-run), identity fields aside."""
        return (
            self.key_id == other.key_id
            and self.operation == other.operation
            and self.profile == other.profile
            and self.algorithm == other.algorithm
            and self.key_store == other.key_store
            and dict(self.params) == dict(other.params)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "operation": self.operation,
            "profile": self.profile,
            "algorithm": self.algorithm,
            "keyStore": self.key_store,
            "createdAt": format_time(self.created_at),
            "params": dict(self.params),
            "fingerprint": self.fingerprint,
            "keyStoreUri": self.key_store_uri,
        }

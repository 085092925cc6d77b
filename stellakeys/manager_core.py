"""What the KeyManager's operation modules (``manager_keys``, ``manager_anchors``,
``manager_proofs``) need of the facade, as a protocol: they sit beside it in layer 7 and must
not import ``stellakeys.manager`` (no import cycle, lazy or under ``TYPE_CHECKING``).

The facade's methods delegate to those modules in one line, passing themselves; these members
are the shared plumbing (the store, the clock, audit and the authorizer inside a write
transaction, key-store handles) that every operation uses.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from stellakeys.anchors import TrustAnchor
from stellakeys.audit import AuditEvent
from stellakeys.ceremony.ports import Authorization
from stellakeys.crypto import Algorithm
from stellakeys.dsse import Envelope
from stellakeys.keys import KeyRecord
from stellakeys.keystores.ports import KeyHandle, KeyStore
from stellakeys.profiles import KeyProfile, SignerConfig
from stellakeys.storage.ports import Store, Transaction
from stellakeys.verification import SigningTime, VerificationPolicy, VerificationResult

if TYPE_CHECKING:
    from stellakeys.store_verifier import StoreVerifier
    from stellakeys.timestamp import TimestampingConfig, TimestampVerifier

__all__ = ["ManagerCore"]


class ManagerCore(Protocol):
    """The parts of :class:`stellakeys.manager.KeyManager` its operation modules use."""

    @property
    def store(self) -> Store: ...

    @property
    def config(self) -> SignerConfig: ...

    @property
    def _ks_lock(self) -> threading.Lock: ...

    @property
    def _verifying(self) -> StoreVerifier: ...

    @property
    def _handles(self) -> dict[str, KeyHandle]: ...

    def _now(self) -> datetime: ...

    def _audit(self, tx: Transaction, event_type: str, **fields: Any) -> AuditEvent: ...

    def _guard(
        self,
        tx: Transaction,
        operation: str,
        details: dict[str, Any],
        authorization: Authorization | None,
    ) -> str | None: ...

    def _preflight(
        self, operation: str, details: dict[str, Any], authorization: Authorization | None
    ) -> None: ...

    def _require_key(self, tx: Transaction, key_id: str) -> KeyRecord: ...

    def _key_store(self, uri: str) -> KeyStore: ...

    def _handle(self, record: KeyRecord) -> KeyHandle: ...

    def _profile_algorithm(
        self, profile: str, algorithm: str | None
    ) -> tuple[KeyProfile, Algorithm]: ...

    def _tsa_verifier(self) -> TimestampVerifier | None: ...

    def timestamping(self) -> TimestampingConfig: ...

    def get_anchor(self, anchor_id: uuid.UUID | str) -> TrustAnchor: ...

    def get_proof(self, digest: str) -> Envelope: ...

    def verify(
        self,
        proof: Envelope | str | bytes,
        *,
        purl: str | None = None,
        at: datetime | None = None,
        trusted_time: SigningTime | None = None,
        policy: VerificationPolicy | None = None,
        timestamps: Sequence[bytes] = (),
        timestamp_verifier: TimestampVerifier | None = None,
        now: datetime | None = None,
    ) -> VerificationResult: ...

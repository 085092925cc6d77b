"""What the ceremony service needs from the rest of the library, and what it hands back.

:class:`ProtectedOperations` is the part of the facade a ceremony executes (the KeyManager
satisfies it structurally; this package never imports the facade). :class:`Authorization` is
what execution passes to one of those operations: the ceremony being executed and the
approvals that verified just before. It is a claim, not a capability: the operation's
authorizer (:class:`~stellakeys.ceremony.authorization.CeremonyAuthorizer`) reads the ceremony
again inside the operation's own write transaction, checks that the call is the one its stored
payload names, re-verifies every approval and records the execution there, so forging or
replaying an Authorization gains nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import attrs

from stellakeys.ceremony.model import Approval, Ceremony

if TYPE_CHECKING:
    from stellakeys.clock import Clock
    from stellakeys.profiles import SignerConfig
    from stellakeys.revocation import RevocationReason
    from stellakeys.storage.ports import Store

__all__ = ["Authorization", "ProtectedOperations"]


@attrs.frozen
class Authorization:
    """The execution of ``ceremony`` by ``actor``, with the approvals counted before it ran."""

    ceremony: Ceremony
    approvals: tuple[Approval, ...]
    #: Who executes (the ``executed`` audit event's actor).
    actor: str

    @property
    def ceremony_id(self) -> str:
        return self.ceremony.ceremony_id

    @property
    def digest(self) -> str:
        return self.ceremony.digest


class ProtectedOperations(Protocol):
    """The facade calls a ceremony executes, and what validating a payload reads."""

    store: Store
    config: SignerConfig
    clock: Clock
    actor: str

    def generate_key(
        self,
        key_id: str,
        profile: str = ...,
        algorithm: str | None = ...,
        *,
        authorization: Authorization | None = ...,
    ) -> object: ...

    def rotate_key(
        self,
        key_id: str,
        *,
        profile: str = ...,
        algorithm: str | None = ...,
        anchor_ids: Sequence[uuid.UUID | str] = ...,
        replaces: str | None = ...,
        revoke_replaced_at: datetime | None = ...,
        revoke_reason: str = ...,
        authorization: Authorization | None = ...,
    ) -> object: ...

    def revoke_key(
        self,
        anchor_id: uuid.UUID | str,
        key_id: str,
        reason: str | RevocationReason,
        effective_at: datetime | None = ...,
        *,
        authorization: Authorization | None = ...,
    ) -> object: ...

    def create_anchor(
        self,
        purl_pattern: str,
        key_ids: Sequence[str],
        predicate_types: Sequence[str],
        policy_version: str = ...,
        anchor_id: uuid.UUID | None = ...,
        *,
        authorization: Authorization | None = ...,
    ) -> object: ...

    def add_key(
        self,
        anchor_id: uuid.UUID | str,
        key_id: str,
        added_at: datetime | None = ...,
        *,
        authorization: Authorization | None = ...,
    ) -> object: ...

    def deactivate_anchor(
        self, anchor_id: uuid.UUID | str, *, authorization: Authorization | None = ...
    ) -> object: ...

"""Reading and recording the store's dual-control policy inside a transaction.

The application-side half of :mod:`stellakeys.ceremony.policy`: every process reads the
policy from the store (:func:`stored_policy`), applies it made stricter by its own
configuration (:func:`effective_policy`), and records a new version only when it is at least
as strict as the one in force, unless an executed ``ceremony-policy-update`` authorises the
weakening (:func:`record_policy`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from stellakeys.audit import AuditRecord
from stellakeys.ceremony.operations import CEREMONY_FOR_OPERATION
from stellakeys.ceremony.policy import (
    EVENT_POLICY_RECORDED,
    CeremonyPolicy,
    FoldedPolicy,
    PolicyVersion,
    effective,
    fold_versions,
)
from stellakeys.errors import PolicyError

if TYPE_CHECKING:
    from stellakeys.storage.ports import Transaction

__all__ = [
    "effective_policy",
    "record_policy",
    "stored_policy",
]


def stored_policy(tx: Transaction) -> FoldedPolicy:
    return fold_versions(tx.ceremony_policy_versions(), tx.get_ceremony)


def effective_policy(tx: Transaction, *configured: CeremonyPolicy) -> CeremonyPolicy:
    return effective(stored_policy(tx).policy, configured)


def protected_message(operation: str) -> str:
    kind = CEREMONY_FOR_OPERATION.get(operation, operation)
    return (
        f"{operation} is protected by dual control: create a ceremony (stella ceremony create"
        f" --type {kind} ...) and execute it once approved"
    )


def record_policy(
    tx: Transaction,
    policy: CeremonyPolicy,
    actor: str,
    now: datetime,
    *,
    ceremony_id: str | None = None,
) -> PolicyVersion | None:
    """Record ``policy`` as the next version, with a ``policy_recorded`` audit event.

    Returns None when it equals the policy in force. Raises PolicyError when it is weaker and
    no ``ceremony_id`` is given (the caller, the ceremony service, passes the id of the
    executed ``ceremony-policy-update`` that authorises it).
    """
    versions = tx.ceremony_policy_versions()
    folded = fold_versions(versions, tx.get_ceremony)
    current = folded.policy
    if current is not None and current.to_dict() == policy.to_dict():
        return None
    weaker = policy.weakenings(current) if current is not None else []
    if weaker and ceremony_id is None:
        raise PolicyError(
            "weakening the store's dual-control policy needs an executed"
            " ceremony-policy-update ceremony: " + "; ".join(weaker)
        )
    record = PolicyVersion(
        version=(versions[-1].version if versions else 0) + 1,
        policy_json=policy.to_json(),
        recorded_at=now,
        recorded_by=actor,
        ceremony_id=ceremony_id,
    )
    tx.insert_ceremony_policy(record)
    tx.append_audit(
        AuditRecord(
            event_type=EVENT_POLICY_RECORDED,
            actor=actor,
            timestamp=now,
            ceremony_id=ceremony_id,
            details={
                "version": record.version,
                "policy": policy.to_dict(),
                "digest": policy.digest,
                "previousDigest": current.digest if current is not None else None,
                "weakenings": weaker,
            },
        )
    )
    return record

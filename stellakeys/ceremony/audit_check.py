"""``stellaops audit verify``'s dual-control check: protected changes without a ceremony.

Pure: it replays the audit log. The store's policy is followed through its
``signer.ceremony.policy_recorded`` events; from then on, every event of a protected change
(as the facade writes them) must name a ceremony whose ``signer.ceremony.executed`` event came
before it. A change made while the policy required a ceremony but naming none is reported, as
is a weakening of the policy that no ceremony authorised. (A database writer who edits rows
without writing events is caught by the hash chain and the recorded head instead.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from stellakeys.audit import AuditEvent, EventType
from stellakeys.ceremony.operations import (
    OP_HSM_KEY_GENERATION,
    OP_KEY_REVOCATION,
    OP_KEY_ROTATION,
    OP_TRUST_ANCHOR_UPDATE,
)
from stellakeys.ceremony.policy import EVENT_POLICY_RECORDED, CeremonyPolicy
from stellakeys.errors import PolicyError

__all__ = ["Finding", "check_protected_operations", "operation_of"]


@attrs.frozen
class Finding:
    seq: int
    event_type: str
    operation: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "eventType": self.event_type,
            "operation": self.operation,
            "reason": self.reason,
        }


def operation_of(event: AuditEvent) -> str | None:
    """The guard operation an event of the facade records, or None if it records none."""
    details: Mapping[str, Any] = event.details
    kind = event.event_type
    if kind == EventType.KEY_GENERATED:
        if "replaces" in details:  # rotate_key writes it (None or the replaced key)
            return OP_KEY_ROTATION
        store = str(details.get("keyStore") or "")
        return OP_HSM_KEY_GENERATION if store.startswith(("hsm:", "pkcs11:")) else None
    if kind == EventType.KEY_REVOKED:
        return OP_KEY_ROTATION if "replacedBy" in details else OP_KEY_REVOCATION
    if kind == EventType.KEY_ADDED:
        return OP_KEY_ROTATION if "replaces" in details else OP_TRUST_ANCHOR_UPDATE
    if kind in (EventType.ANCHOR_CREATED, EventType.ANCHOR_DEACTIVATED):
        return OP_TRUST_ANCHOR_UPDATE
    return None


def check_protected_operations(events: Iterable[AuditEvent]) -> list[Finding]:
    """Every protected change made without an executed ceremony while the store's policy
    required one, and every unauthorised weakening of that policy, in log order."""
    findings: list[Finding] = []
    policy: CeremonyPolicy | None = None
    executed: set[str] = set()
    for event in events:
        if event.event_type == EventType.CEREMONY_EXECUTED and event.ceremony_id:
            executed.add(event.ceremony_id)
            continue
        if event.event_type == EVENT_POLICY_RECORDED:
            try:
                new = CeremonyPolicy.from_dict(event.details.get("policy"))
            except PolicyError as exc:
                findings.append(
                    Finding(event.seq, event.event_type, "policy", f"unreadable: {exc}")
                )
                continue
            weaker = new.weakenings(policy) if policy is not None else []
            if weaker and event.ceremony_id not in executed:
                findings.append(
                    Finding(
                        event.seq,
                        event.event_type,
                        "policy",
                        "the policy was weakened without an executed ceremony-policy-update: "
                        + "; ".join(weaker),
                    )
                )
            policy = new
            continue
        operation = operation_of(event)
        if operation is None or policy is None or not policy.requires(operation):
            continue
        if event.ceremony_id is None:
            findings.append(
                Finding(
                    event.seq,
                    event.event_type,
                    operation,
                    f"{operation} made without a ceremony while the store's policy required one",
                )
            )
        elif event.ceremony_id not in executed:
            findings.append(
                Finding(
                    event.seq,
                    event.event_type,
                    operation,
                    f"names ceremony {event.ceremony_id}, which was not executed before it",
                )
            )
    return findings

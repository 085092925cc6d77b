"""Re-verification of a ceremony's approvals at the moment of execution.

Pure. What the store returns is evidence, not truth: a database writer can change a
ceremony's payload, insert an approval row, or flip its state to Approved. So execution counts
no stored approval on its word. Each one is checked again, against

* the ceremony's *current* terms: the signed statement must name this ceremony id and the
  digest of the type, subject, payload, threshold, requiredApprovers and expiry as they are
  stored now (a changed payload row voids every approval given before the change);
* the approvers as they are *now* (approvers.yaml read at this decision): the approver is
  still in a group allowed for the type (and by the policy's roles), still holds
  ``ceremony:approve``, signed with a key still registered for them and not revoked, and is
  not the initiator (unless the policy allows self-approval);
* the policy in force (the store's, made stricter by the process's configuration).

Approvals that fail are left out, each with a code and a reason for the audit log. The
threshold needed is the ceremony's own, never below the policy's minimum for its type.
"""

from __future__ import annotations

import attrs

from stellakeys.ceremony.actor import SCOPE_APPROVE
from stellakeys.ceremony.approvers import ApproverRegistry
from stellakeys.ceremony.model import Approval, Ceremony, Decision
from stellakeys.ceremony.policy import CeremonyPolicy
from stellakeys.ceremony.statement import verify_statement
from stellakeys.dsse import Envelope
from stellakeys.errors import InvalidSignatureError, MalformedEnvelopeError

__all__ = ["Discounted", "Recheck", "eligible_now", "recheck_approvals"]


@attrs.frozen
class Discounted:
    approval: Approval
    code: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "approvalId": self.approval.approval_id,
            "approver": self.approval.approver,
            "code": self.code,
            "reason": self.reason,
        }


@attrs.frozen
class Recheck:
    counted: tuple[Approval, ...]
    discounted: tuple[Discounted, ...]
    #: Approvals needed: max(the ceremony's threshold, the policy's minimum for its type).
    needed: int

    @property
    def ok(self) -> bool:
        return len(self.counted) >= self.needed


def eligible_now(
    registry: ApproverRegistry, policy: CeremonyPolicy, identity: str, ceremony_type: str
) -> bool:
    """In a group whose operations include the type and that the policy's roles allow."""
    rule = policy.rule(ceremony_type)
    return any(
        ceremony_type in g.operations and rule.allows_group(g.name)
        for g in registry.groups_of(identity)
    )


def _problem(
    ceremony: Ceremony, approval: Approval, registry: ApproverRegistry, policy: CeremonyPolicy
) -> tuple[str, str] | tuple[None, str | None]:
    """(code, reason) of why ``approval`` does not count, or (None, key fingerprint)."""
    who = approval.approver
    if approval.ceremony_id != ceremony.ceremony_id:
        return "wrong-ceremony", f"the approval row belongs to {approval.ceremony_id}"
    if who == ceremony.initiator and not policy.allow_self_approval:
        return "initiator", f"{who} initiated the ceremony and cannot approve it"
    if not eligible_now(registry, policy, who, ceremony.type):
        return (
            "not-eligible",
            f"{who} is no longer in an approver group allowed for {ceremony.type}",
        )
    if SCOPE_APPROVE not in registry.scopes_of(who):
        return "missing-scope", f"{who} no longer holds {SCOPE_APPROVE}"
    if approval.envelope_json is None:
        if policy.require_signed_approvals:
            return "unsigned", "the approval carries no signed statement"
        return None, None
    try:
        envelope = Envelope.from_json(approval.envelope_json)
        verified = verify_statement(envelope, registry.keyring_of(who))
    except MalformedEnvelopeError as exc:
        return "bad-signature", f"the stored statement is malformed: {exc}"
    except InvalidSignatureError as exc:
        return "bad-signature", f"the signature does not verify with a current key: {exc}"
    statement = verified.statement
    if statement.ceremony_id != ceremony.ceremony_id:
        return "wrong-ceremony", f"the signed statement is for {statement.ceremony_id}"
    if statement.ceremony_digest != ceremony.digest:
        return (
            "terms-changed",
            f"the signed statement approves {statement.ceremony_digest}, but the ceremony's"
            f" terms are now {ceremony.digest}",
        )
    if statement.approver != who:
        return "approver-mismatch", f"the signed statement names {statement.approver}"
    if statement.decision is not Decision.APPROVE:
        return "decision-mismatch", f"the signed statement says {statement.decision.value}"
    return None, verified.key.fingerprint


def recheck_approvals(
    ceremony: Ceremony, registry: ApproverRegistry, policy: CeremonyPolicy
) -> Recheck:
    """Which of the ceremony's approvals count now, and why the others do not."""
    counted: list[Approval] = []
    discounted: list[Discounted] = []
    approvers: set[str] = set()
    fingerprints: set[str] = set()
    for approval in ceremony.approvals:
        if approval.decision is not Decision.APPROVE:
            continue
        code, detail = _problem(ceremony, approval, registry, policy)
        if code is not None:
            discounted.append(Discounted(approval, code, detail or code))
            continue
        if approval.approver in approvers or (detail is not None and detail in fingerprints):
            discounted.append(
                Discounted(approval, "duplicate", "the same approver or key counted once already")
            )
            continue
        approvers.add(approval.approver)
        if detail is not None:
            fingerprints.add(detail)
        counted.append(approval)
    needed = max(ceremony.threshold, policy.rule(ceremony.type).minimum)
    return Recheck(tuple(counted), tuple(discounted), needed)

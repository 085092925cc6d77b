"""The ceremony rules, pure: may this actor's decision be recorded, and which approvals count
at execution.

Nothing here reads the store, the clock or a file: the caller passes the ceremony as read in
its transaction, the approvers as they are now (one snapshot per decision) and the policy in
force. Every refusal carries a :class:`RefusalCode`, which is what the audit log records
(``signer.ceremony.approval_rejected`` ``code``, ``approval_discounted`` ``code``) and what
callers branch on; the message is for people.

:func:`decide` / :func:`check_decision` judge a submitted decision (an approval or a signed
rejection). :func:`recheck_approvals` re-verifies every stored approval at execution. What the
store returns is evidence, not truth: a database writer can change a ceremony's payload,
insert an approval row, or flip its state to Approved. So execution counts no stored approval
on its word; each is checked again against

* the ceremony's *current* terms: the signed statement must name this ceremony id and the
  digest of the type, subject, payload, threshold, requiredApprovers and expiry as they are
  stored now (a changed payload row voids every approval given before the change);
* the approvers as they are *now*: the approver is still in a group allowed for the type (and
  by the policy's roles), still holds ``ceremony:approve``, signed with a key still registered
  for them, and is not the initiator (unless the policy allows self-approval);
* the policy in force (the store's, made stricter by the process's configuration).

The threshold needed is the ceremony's own, never below the policy's minimum for its type.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from stellakeys.ceremony.actor import SCOPE_APPROVE, Actor
from stellakeys.ceremony.approvers import ApproverRegistry
from stellakeys.ceremony.model import Approval, Ceremony, Decision, check_reason
from stellakeys.ceremony.policy import CeremonyPolicy
from stellakeys.ceremony.statement import ApprovalStatement, verify_statement
from stellakeys.dsse import Envelope
from stellakeys.errors import InvalidSignatureError, MalformedEnvelopeError, PolicyError

__all__ = [
    "Accepted",
    "Discounted",
    "Recheck",
    "Refusal",
    "RefusalCode",
    "Submission",
    "check_decision",
    "decide",
    "eligible_now",
    "recheck_approvals",
]


class RefusalCode(enum.StrEnum):
    """Why a decision was refused or a stored approval was not counted. The values are the
    audit log's ``code`` strings (stable: ``audit verify`` and alerting read them)."""

    UNKNOWN_CEREMONY = "unknown-ceremony"
    MISSING_SCOPE = "missing-scope"
    INITIATOR = "initiator"
    NOT_ELIGIBLE = "not-eligible"
    UNSIGNED = "unsigned"
    MALFORMED_STATEMENT = "malformed-statement"
    WRONG_CEREMONY = "wrong-ceremony"
    APPROVER_MISMATCH = "approver-mismatch"
    INVALID_SIGNATURE = "invalid-signature"
    PAYLOAD_MISMATCH = "payload-mismatch"
    DECISION_MISMATCH = "decision-mismatch"
    REASON_MISMATCH = "reason-mismatch"
    # From the state machine (Ceremony.with_decision), inside the write transaction.
    EXPIRED = "expired"
    NOT_OPEN = "not-open"
    ALREADY_APPROVED = "already-approved"
    # Re-verification at execution only.
    BAD_SIGNATURE = "bad-signature"
    TERMS_CHANGED = "terms-changed"
    DUPLICATE = "duplicate"


@attrs.frozen
class Refusal:
    code: RefusalCode
    message: str
    #: Extra audit details (which key signed, when the signature verified before a later rule
    #: refused the statement).
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Submission:
    """What an approver submitted: a signed statement (``envelope``), or, when the policy
    allows unsigned approvals, a bare decision and reason. ``decision`` / ``reason`` given
    alongside an envelope must agree with what it signs."""

    envelope: Envelope | None = None
    decision: Decision | None = None
    reason: str | None = None


@attrs.frozen
class Accepted:
    """A decision that may be recorded (the state machine still has its say in the write
    transaction: expired, closed, already decided)."""

    decision: Decision
    reason: str
    #: signatureAlgorithm / signatureKeyId / signatureFingerprint of the verified statement.
    signature: dict[str, Any] = attrs.field(factory=dict)
    envelope_json: bytes | None = None


def eligible_now(
    registry: ApproverRegistry, policy: CeremonyPolicy, identity: str, ceremony_type: str
) -> bool:
    """In a group whose operations include the type and that the policy's roles allow."""
    rule = policy.rule(ceremony_type)
    return any(
        ceremony_type in g.operations and rule.allows_group(g.name)
        for g in registry.groups_of(identity)
    )


# --- a submitted decision ------------------------------------------------------------------


def _authority(
    ceremony: Ceremony, actor: Actor, registry: ApproverRegistry, policy: CeremonyPolicy
) -> Refusal | None:
    """Authorisation first: it needs nothing from the request."""
    who = actor.identity
    if not actor.has(SCOPE_APPROVE):
        return Refusal(RefusalCode.MISSING_SCOPE, f"{who} does not hold the {SCOPE_APPROVE} scope")
    if who == ceremony.initiator and not policy.allow_self_approval:
        return Refusal(
            RefusalCode.INITIATOR,
            f"{who} initiated {ceremony.ceremony_id} and cannot approve it: a different"
            " approver must approve",
        )
    if who not in ceremony.allowed_approvers or not eligible_now(
        registry, policy, who, ceremony.type
    ):
        return Refusal(
            RefusalCode.NOT_ELIGIBLE,
            f"{who} is not in the allowed approvers of {ceremony.ceremony_id}: approvers come"
            f" from the approver groups whose operations include {ceremony.type}",
        )
    return None


def _unsigned(submission: Submission, policy: CeremonyPolicy) -> Refusal | Accepted:
    if policy.require_signed_approvals:
        return Refusal(
            RefusalCode.UNSIGNED,
            "signed approvals are required (ceremonies.requireSignedApprovals):"
            " sign the approval statement with your registered key (--sign)",
        )
    if submission.decision is None:
        # A caller's mistake, not an approver's attempt: nothing to audit.
        raise PolicyError("an unsigned decision must say approve or reject")
    try:
        text = check_reason(submission.reason or "", "an approval")
    except PolicyError as exc:
        return Refusal(RefusalCode.MALFORMED_STATEMENT, str(exc))
    return Accepted(submission.decision, text)


def _signed(
    ceremony: Ceremony,
    who: str,
    envelope: Envelope,
    submission: Submission,
    registry: ApproverRegistry,
) -> Refusal | Accepted:
    try:
        statement = ApprovalStatement.from_envelope(envelope)
    except MalformedEnvelopeError as exc:
        return Refusal(RefusalCode.MALFORMED_STATEMENT, str(exc))
    if statement.ceremony_id != ceremony.ceremony_id:
        return Refusal(
            RefusalCode.WRONG_CEREMONY,
            f"the signed statement is for {statement.ceremony_id}, not"
            f" {ceremony.ceremony_id} (a replayed approval?)",
        )
    if statement.approver != who:
        return Refusal(
            RefusalCode.APPROVER_MISMATCH,
            f"the signed statement names {statement.approver}, but {who} submitted it",
        )
    try:
        verified = verify_statement(envelope, registry.keyring_of(who))
    except InvalidSignatureError as exc:
        return Refusal(
            RefusalCode.INVALID_SIGNATURE,
            f"invalid signature: {exc}; re-sign with the correct key (stella auth keys"
            " list shows the registered ones)",
        )
    signature = {
        "signatureAlgorithm": verified.key.algorithm,
        "signatureKeyId": verified.key.key_id,
        "signatureFingerprint": verified.key.fingerprint,
    }
    if statement.ceremony_digest != ceremony.digest:
        return Refusal(
            RefusalCode.PAYLOAD_MISMATCH,
            f"the signed statement approves other terms ({statement.ceremony_digest})"
            f" than the ceremony's ({ceremony.digest}): type, subject, payload,"
            " threshold or expiry differ",
            signature,
        )
    if submission.decision is not None and statement.decision is not submission.decision:
        return Refusal(
            RefusalCode.DECISION_MISMATCH,
            f"the signed statement says {statement.decision.value},"
            f" not {submission.decision.value}",
            signature,
        )
    if submission.reason is not None and submission.reason.strip() != statement.reason:
        return Refusal(
            RefusalCode.REASON_MISMATCH, "the reason given differs from the signed one", signature
        )
    return Accepted(statement.decision, statement.reason, signature, envelope.to_json())


def decide(
    ceremony: Ceremony,
    actor: Actor,
    submission: Submission,
    policy: CeremonyPolicy,
    registry: ApproverRegistry,
) -> Refusal | Accepted:
    """Judge ``actor``'s submission on ``ceremony``: the refusal (first rule broken), or what
    to record. Raises PolicyError only for a caller's mistake (an unsigned submission that
    names no decision)."""
    refused = _authority(ceremony, actor, registry, policy)
    if refused is not None:
        return refused
    if submission.envelope is None:
        return _unsigned(submission, policy)
    return _signed(ceremony, actor.identity, submission.envelope, submission, registry)


def check_decision(
    ceremony: Ceremony,
    actor: Actor,
    submission: Submission,
    policy: CeremonyPolicy,
    registry: ApproverRegistry,
) -> Refusal | None:
    """The refusal of ``actor``'s submission, or None when it may be recorded."""
    verdict = decide(ceremony, actor, submission, policy, registry)
    return verdict if isinstance(verdict, Refusal) else None


# --- re-verification at execution ------------------------------------------------------------


@attrs.frozen
class Discounted:
    approval: Approval
    code: RefusalCode
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "approvalId": self.approval.approval_id,
            "approver": self.approval.approver,
            "code": self.code.value,
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

    def refusal_text(self, ceremony: Ceremony) -> str:
        why = "; ".join(f"{d.approval.approver}: {d.reason}" for d in self.discounted)
        return (
            f"cannot execute ceremony {ceremony.ceremony_id}: {len(self.counted)} of the"
            f" {self.needed} approvals needed verify now"
            + (f" (not counted: {why})" if why else "")
        )


def _problem(
    ceremony: Ceremony, approval: Approval, registry: ApproverRegistry, policy: CeremonyPolicy
) -> tuple[RefusalCode, str] | tuple[None, str | None]:
    """(code, reason) of why ``approval`` does not count, or (None, key fingerprint)."""
    who = approval.approver
    if approval.ceremony_id != ceremony.ceremony_id:
        return RefusalCode.WRONG_CEREMONY, f"the approval row belongs to {approval.ceremony_id}"
    if who == ceremony.initiator and not policy.allow_self_approval:
        return RefusalCode.INITIATOR, f"{who} initiated the ceremony and cannot approve it"
    if not eligible_now(registry, policy, who, ceremony.type):
        return (
            RefusalCode.NOT_ELIGIBLE,
            f"{who} is no longer in an approver group allowed for {ceremony.type}",
        )
    if SCOPE_APPROVE not in registry.scopes_of(who):
        return RefusalCode.MISSING_SCOPE, f"{who} no longer holds {SCOPE_APPROVE}"
    if approval.envelope_json is None:
        if policy.require_signed_approvals:
            return RefusalCode.UNSIGNED, "the approval carries no signed statement"
        return None, None
    try:
        envelope = Envelope.from_json(approval.envelope_json)
        verified = verify_statement(envelope, registry.keyring_of(who))
    except MalformedEnvelopeError as exc:
        return RefusalCode.BAD_SIGNATURE, f"the stored statement is malformed: {exc}"
    except InvalidSignatureError as exc:
        return (
            RefusalCode.BAD_SIGNATURE,
            f"the signature does not verify with a current key: {exc}",
        )
    statement = verified.statement
    if statement.ceremony_id != ceremony.ceremony_id:
        return RefusalCode.WRONG_CEREMONY, f"the signed statement is for {statement.ceremony_id}"
    if statement.ceremony_digest != ceremony.digest:
        return (
            RefusalCode.TERMS_CHANGED,
            f"the signed statement approves {statement.ceremony_digest}, but the ceremony's"
            f" terms are now {ceremony.digest}",
        )
    if statement.approver != who:
        return RefusalCode.APPROVER_MISMATCH, f"the signed statement names {statement.approver}"
    if statement.decision is not Decision.APPROVE:
        return (
            RefusalCode.DECISION_MISMATCH,
            f"the signed statement says {statement.decision.value}",
        )
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
            discounted.append(Discounted(approval, code, detail or code.value))
            continue
        if approval.approver in approvers or (detail is not None and detail in fingerprints):
            discounted.append(
                Discounted(
                    approval,
                    RefusalCode.DUPLICATE,
                    "the same approver or key counted once already",
                )
            )
            continue
        approvers.add(approval.approver)
        if detail is not None:
            fingerprints.add(detail)
        counted.append(approval)
    needed = max(ceremony.threshold, policy.rule(ceremony.type).minimum)
    return Recheck(tuple(counted), tuple(discounted), needed)

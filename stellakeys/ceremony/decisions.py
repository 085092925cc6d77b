"""Recording decisions on a ceremony: approve, reject, submit.

Which decision may be recorded is decided by the pure rules
(:func:`stellakeys.ceremony.rules.decide`) on the ceremony and the policy as read, and the
approvers as they are now; this module only reads, audits and writes. A refused decision is
audited (``signer.ceremony.approval_rejected`` with its :class:`RefusalCode`) before it is
raised. Two approvers racing for the last approval are serialised by the write transaction:
exactly one reaches the threshold, the other finds the ceremony Approved and is refused.
"""

from __future__ import annotations

import builtins
import logging
from typing import TYPE_CHECKING, Any

from stellakeys.audit import EventType
from stellakeys.ceremony._service_base import ServiceBase
from stellakeys.ceremony.actor import Actor
from stellakeys.ceremony.errors import ApprovalRejectedError
from stellakeys.ceremony.model import (
    Approval,
    Ceremony,
    Decision,
    check_reason,
    new_approval_id,
)
from stellakeys.ceremony.rules import Refusal, RefusalCode, Submission, decide
from stellakeys.ceremony.statement import ApprovalStatement
from stellakeys.dsse import Envelope
from stellakeys.notify.ports import Notification, NotificationKind

if TYPE_CHECKING:
    from stellakeys.storage.ports import Transaction

__all__ = ["Decisions"]

_log = logging.getLogger("stellakeys.ceremony.service")


class Decisions(ServiceBase):
    """The approve / reject half of :class:`~stellakeys.ceremony.service.CeremonyService`."""

    def statement(
        self, ceremony_id: str, approver: str, decision: Decision, reason: str
    ) -> ApprovalStatement:
        """The statement an approver signs (for clients that sign elsewhere, e.g. an HSM)."""
        ceremony = self.get(ceremony_id)
        return ApprovalStatement.for_ceremony(
            ceremony, approver, decision, check_reason(reason, "an approval"), self._now()
        )

    def approve(
        self,
        actor: Actor | str,
        ceremony_id: str,
        envelope: Envelope | None = None,
        *,
        reason: str | None = None,
    ) -> tuple[Ceremony, Approval]:
        """Record an approval. With signed approvals required (the default) ``envelope`` must
        be the DSSE-signed :class:`ApprovalStatement`; ``reason`` is then taken from it.

        Raises ApprovalRejectedError (after auditing ``signer.ceremony.approval_rejected``).
        """
        return self._decide(self._as_actor(actor), ceremony_id, envelope, Decision.APPROVE, reason)

    def reject(
        self,
        actor: Actor | str,
        ceremony_id: str,
        envelope: Envelope | None = None,
        *,
        reason: str | None = None,
    ) -> tuple[Ceremony, Approval]:
        """Record an approver's signed refusal. It counts as that approver's one decision and
        changes no state; it is audited as ``approval_rejected`` with code ``declined``."""
        return self._decide(self._as_actor(actor), ceremony_id, envelope, Decision.REJECT, reason)

    def submit(
        self, actor: Actor | str, ceremony_id: str, envelope: Envelope
    ) -> tuple[Ceremony, Approval]:
        """Record a signed statement, approve or reject as it says (the API's entry point)."""
        return self._decide(self._as_actor(actor), ceremony_id, envelope, None, None)

    def _refuse(
        self,
        actor: Actor,
        ceremony: Ceremony | None,
        ceremony_id: str,
        refusal: Refusal,
        tx: Transaction | None = None,
    ) -> ApprovalRejectedError:
        """Audit a refused approval (in ``tx`` or a transaction of its own); return the error
        for the caller to raise once the audit is committed."""
        code = refusal.code.value
        details: dict[str, Any] = {
            "ceremonyType": ceremony.type if ceremony else None,
            "approver": actor.identity,
            "code": code,
            "reason": refusal.message,
            "currentApprovals": ceremony.current_approvals if ceremony else None,
            "threshold": ceremony.threshold if ceremony else None,
            **refusal.details,
        }
        # An unknown id is recorded as given, but bounded: it is attacker-controlled text.
        cid = ceremony.ceremony_id if ceremony else ceremony_id[:100]
        if tx is not None:
            self._audit(
                tx, EventType.CEREMONY_APPROVAL_REJECTED, actor.identity, cid, self._now(), details
            )
        else:
            with self._store.transaction() as own:
                self._audit(
                    own,
                    EventType.CEREMONY_APPROVAL_REJECTED,
                    actor.identity,
                    cid,
                    self._now(),
                    details,
                )
        _log.info("approval of %s by %s rejected (%s)", cid, actor.identity, code)
        return ApprovalRejectedError(code, refusal.message)

    def _decide(
        self,
        actor: Actor,
        ceremony_id: str,
        envelope: Envelope | None,
        decision: Decision | None,
        reason: str | None,
    ) -> tuple[Ceremony, Approval]:
        with self._store.read() as tx:
            ceremony = tx.get_ceremony(ceremony_id)
            policy = self.policy(tx)
        if ceremony is None:
            unknown = Refusal(RefusalCode.UNKNOWN_CEREMONY, f"no ceremony {ceremony_id!r}")
            raise self._refuse(actor, None, ceremony_id, unknown)
        registry = self.approvers  # one snapshot for this decision
        verdict = decide(ceremony, actor, Submission(envelope, decision, reason), policy, registry)
        if isinstance(verdict, Refusal):
            raise self._refuse(actor, ceremony, ceremony_id, verdict)
        who = actor.identity
        signature = verdict.signature
        chosen, text = verdict.decision, verdict.reason

        error: ApprovalRejectedError | None = None
        notices: builtins.list[Notification] = []
        with self._store.transaction() as tx:
            now = self._now()
            current = self._load(tx, ceremony_id)
            approval = Approval(
                approval_id=new_approval_id(),
                ceremony_id=ceremony_id,
                approver=who,
                decision=chosen,
                reason=text,
                approved_at=now,
                signature_valid=envelope is not None,
                signature_key_id=signature.get("signatureKeyId"),
                signature_algorithm=signature.get("signatureAlgorithm"),
                signature_fingerprint=signature.get("signatureFingerprint"),
                envelope_json=verdict.envelope_json,
            )
            if current.is_overdue(now):
                current = self._expire_in(tx, current, now)
                notices.append(self._expired_notice(current))
            try:
                updated, reached = current.with_decision(approval, now)
            except ApprovalRejectedError as exc:
                # The state machine's refusal (expired, closed, already decided).
                refusal = Refusal(RefusalCode(exc.code), exc.reason, signature)
                error = self._refuse(actor, current, ceremony_id, refusal, tx=tx)
            else:
                tx.insert_approval(approval)
                if updated.state is not current.state:
                    tx.update_ceremony(updated)
                common = {
                    "ceremonyType": updated.type,
                    "approvalId": approval.approval_id,
                    "currentApprovals": updated.current_approvals,
                    "threshold": updated.threshold,
                    "signatureAlgorithm": approval.signature_algorithm,
                    "signatureKeyId": approval.signature_key_id,
                    "signatureValid": approval.signature_valid,
                    "approver": who,
                    "reason": text,
                    "state": updated.state.value,
                }
                if chosen is Decision.APPROVE:
                    self._audit(tx, EventType.CEREMONY_APPROVED, who, ceremony_id, now, common)
                else:
                    self._audit(
                        tx,
                        EventType.CEREMONY_APPROVAL_REJECTED,
                        who,
                        ceremony_id,
                        now,
                        {**common, "code": "declined", "decision": "reject"},
                    )
                if reached:
                    self._audit(
                        tx,
                        EventType.CEREMONY_THRESHOLD_REACHED,
                        who,
                        ceremony_id,
                        now,
                        {
                            "ceremonyType": updated.type,
                            "currentApprovals": updated.current_approvals,
                            "threshold": updated.threshold,
                            "approvers": [
                                a.approver
                                for a in updated.approvals
                                if a.decision is Decision.APPROVE
                            ],
                        },
                    )
        if error is not None:
            self._send(notices)
            raise error
        self._send(self._after_decision(updated, approval, reached))
        return updated, approval

    def _after_decision(
        self, ceremony: Ceremony, approval: Approval, reached: bool
    ) -> builtins.list[Notification]:
        verb = "approved" if approval.decision is Decision.APPROVE else "rejected"
        out = []
        remaining = ceremony.remaining_approvers()
        if remaining and not reached:
            out.append(
                self._notification(
                    NotificationKind.APPROVAL_SUBMITTED,
                    ceremony,
                    remaining,
                    f"{approval.approver} {verb} {ceremony.ceremony_id}"
                    f" ({ceremony.current_approvals} of {ceremony.threshold})",
                    [f"Reason: {approval.reason}", self._approve_hint(ceremony)],
                )
            )
        if reached:
            out.append(
                self._notification(
                    NotificationKind.THRESHOLD_REACHED,
                    ceremony,
                    (ceremony.initiator,),
                    f"Ceremony {ceremony.ceremony_id} approved: ready to execute",
                    [f"To execute: stella ceremony execute --ceremony-id {ceremony.ceremony_id}"],
                )
            )
        return out

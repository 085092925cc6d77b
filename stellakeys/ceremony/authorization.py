"""The authorizer of protected operations: what the facade asks, inside each protected
operation's own write transaction, before it changes anything.

It is built once, by the composition (:meth:`stellakeys.manager.KeyManager.from_settings`, or
whoever builds a KeyManager), from the ceremony configuration and the approvers, and given to
the KeyManager's constructor; the :class:`~stellakeys.ceremony.service.CeremonyService` uses
the same one. Nothing is installed on the facade afterwards and no context variable carries
state between the two: an execution passes an explicit
:class:`~stellakeys.ceremony.ports.Authorization` down the call.

* Without an authorization, an operation the policy in force protects is refused. The policy
  in force is the store's recorded one made stricter by this process's configuration
  (decision 0015): a process configured with ceremonies off, or with no ceremony
  configuration at all, still refuses what the store protects.
* With one, :meth:`CeremonyAuthorizer.authorize` reads the ceremony again in the operation's
  transaction, checks that the call is exactly the one its *stored* payload names, that the
  ceremony is still Approved, unchanged and within its window, re-verifies every approval
  against the approvers read now (:func:`stellakeys.ceremony.rules.recheck_approvals`), and
  records Executed, the result and the ``executed`` audit event in that same transaction. The
  operation and the ceremony's execution commit together or not at all; a second executor
  (another thread, another process) blocks on the write lock, then finds Executed and is
  refused, rolling back its own operation. That is what keeps execution exactly-once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stellakeys.audit import AuditRecord, EventType
from stellakeys.ceremony.approvers import ApproverFile, ApproverRegistry
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.errors import CeremonyStateError
from stellakeys.ceremony.model import Ceremony
from stellakeys.ceremony.operations import PROTECTED_OPERATIONS, plan_for, result_for
from stellakeys.ceremony.policy import EVENT_APPROVAL_DISCOUNTED, CeremonyPolicy
from stellakeys.ceremony.policy_store import effective_policy, protected_message, record_policy
from stellakeys.ceremony.ports import Authorization
from stellakeys.ceremony.rules import Recheck, recheck_approvals
from stellakeys.errors import NotFoundError, PolicyError

if TYPE_CHECKING:
    from stellakeys.config import Settings
    from stellakeys.storage.ports import Transaction

__all__ = ["CeremonyAuthorizer", "ExecutionRefusedError", "audit_discounted"]

ApproverSource = ApproverRegistry | Callable[[], ApproverRegistry] | None


class ExecutionRefusedError(CeremonyStateError):
    """Too few approvals verified inside the operation's transaction (which rolled back).

    Carries what was seen, so the ceremony service can record the refusal and its reasons in
    a transaction of its own."""

    def __init__(self, ceremony: Ceremony, check: Recheck) -> None:
        self.ceremony = ceremony
        self.check = check
        super().__init__(check.refusal_text(ceremony))


def audit_discounted(
    tx: Transaction, actor: str, ceremony: Ceremony, check: Recheck, now: datetime
) -> None:
    """One ``approval_discounted`` event per approval that did not count."""
    for d in check.discounted:
        tx.append_audit(
            AuditRecord(
                event_type=EVENT_APPROVAL_DISCOUNTED,
                actor=actor,
                timestamp=now,
                ceremony_id=ceremony.ceremony_id,
                details={"ceremonyType": ceremony.type, **d.to_dict()},
            )
        )


class CeremonyAuthorizer:
    """Decides, inside a write transaction, whether a protected operation may run.

    ``approvers`` may be a registry or a zero-argument loader, called at every decision
    (:class:`~stellakeys.ceremony.approvers.ApproverFile` re-reads approvers.yaml when it
    changed), so a removed approver never counts in a long-lived process.
    """

    def __init__(
        self, config: CeremonyConfig | None = None, approvers: ApproverSource = None
    ) -> None:
        self._config = config or CeremonyConfig()
        self._approvers_source = approvers

    @classmethod
    def from_settings(cls, settings: Settings) -> CeremonyAuthorizer:
        """From the signer configuration document: the ``ceremonies`` section and the
        approvers (``ceremonies.approvers``, else ``approverGroups`` / ``approvers`` in the
        document, else ``<home>/approvers.yaml``)."""
        config = CeremonyConfig.from_document(settings.document, settings.home)
        document = settings.document
        inline = {k: document[k] for k in ("approverGroups", "approvers") if k in document}
        approvers: ApproverSource
        if config.approvers_path is None and inline:
            approvers = ApproverRegistry.from_dict(inline, base_dir=settings.home)
        else:
            # Re-read at every decision when it changed (never cached for the process's life).
            approvers = ApproverFile(config.approvers_path or settings.home / "approvers.yaml").get
        return cls(config, approvers)

    @property
    def config(self) -> CeremonyConfig:
        """This process's ceremony configuration (given at construction: a process asks for
        what its settings say; the store's recorded policy is never weakened by it)."""
        return self._config

    @property
    def approvers(self) -> ApproverRegistry:
        """The approvers as they are now: a loader is asked again on every access (take one
        snapshot per decision)."""
        source = self._approvers_source
        if source is None:
            return ApproverRegistry()
        if isinstance(source, ApproverRegistry):
            return source
        return source()

    def policy(self, tx: Transaction) -> CeremonyPolicy:
        """The policy in force: the store's recorded policy, made stricter by this
        configuration (never weaker)."""
        return effective_policy(tx, CeremonyPolicy.from_config(self.config))

    def record_configured_policy(
        self, tx: Transaction, actor: str, now: datetime
    ) -> CeremonyPolicy | None:
        """Record the stored policy made stricter by this configuration; None when nothing
        changed (it never weakens)."""
        merged = self.policy(tx)
        done = record_policy(tx, merged, actor, now)
        return merged if done is not None else None

    def authorize(
        self,
        tx: Transaction,
        operation: str,
        details: Mapping[str, Any],
        authorization: Authorization | None,
        *,
        now: datetime,
        preflight: bool = False,
    ) -> str | None:
        """Refuse ``operation`` (raise), or allow it: returns the id of the ceremony that
        authorises it (its audit events name it), or None for an unprotected operation.

        ``preflight`` asks without recording (before key generation, so a refused operation
        makes no key material)."""
        if authorization is None:
            if operation in PROTECTED_OPERATIONS and self.policy(tx).requires(operation):
                raise PolicyError(protected_message(operation))
            return None
        cid = authorization.ceremony_id
        ceremony = tx.get_ceremony(cid)
        if ceremony is None:
            raise NotFoundError(f"no ceremony {cid!r}")
        if ceremony.digest != authorization.digest:
            raise CeremonyStateError(f"ceremony {cid} changed during execution")
        # What the stored payload names, not what the caller claims.
        plan = plan_for(ceremony)
        if operation != plan.operation or any(
            details.get(k) != v for k, v in plan.expected.items()
        ):
            raise PolicyError(
                f"ceremony {cid} authorises {plan.operation} with its payload, not this {operation}"
            )
        ceremony.require_executable(now)  # a concurrent executor committed first: refused here
        policy = self.policy(tx)
        check = recheck_approvals(ceremony, self.approvers, policy)
        if not check.ok:
            raise ExecutionRefusedError(ceremony, check)
        if preflight:
            return cid
        result = result_for(ceremony, details, tx, now)
        tx.update_ceremony(ceremony.executed(result, now))
        audit_discounted(tx, authorization.actor, ceremony, check, now)
        key_id = result.get("keyId")
        tx.append_audit(
            AuditRecord(
                event_type=EventType.CEREMONY_EXECUTED,
                actor=authorization.actor,
                timestamp=now,
                ceremony_id=cid,
                key_id=key_id if isinstance(key_id, str) else None,
                details={
                    "ceremonyType": ceremony.type,
                    "operation": operation,
                    "currentApprovals": len(check.counted),
                    "threshold": ceremony.threshold,
                    "approvals": [a.approver for a in check.counted],
                    "policyDigest": policy.digest,
                    "result": result,
                },
            )
        )
        return cid

"""Executing an Approved ceremony, exactly once.

:meth:`Execution.execute` verifies every approval again (:mod:`stellakeys.ceremony.rules`),
then calls the one protected operation the ceremony's payload names, passing an explicit
:class:`~stellakeys.ceremony.ports.Authorization`. The operation hands it to its authorizer
inside its own write transaction (:mod:`stellakeys.ceremony.authorization`), which re-reads
the ceremony, re-verifies the approvals there and records the execution in that same
transaction. A ``ceremony-policy-update`` changes no key or anchor: it records the new policy
and the execution together, here.
"""

from __future__ import annotations

import logging
import time

from stellakeys.audit import EventType
from stellakeys.ceremony._service_base import ServiceBase
from stellakeys.ceremony.actor import Actor
from stellakeys.ceremony.authorization import ExecutionRefusedError, audit_discounted
from stellakeys.ceremony.errors import (
    CeremonyExecutedError,
    CeremonyExpiredError,
    CeremonyStateError,
)
from stellakeys.ceremony.model import POLICY_UPDATE, Ceremony, CeremonyState
from stellakeys.ceremony.operations import plan_for
from stellakeys.ceremony.policy import EVENT_EXECUTION_REFUSED, CeremonyPolicy
from stellakeys.ceremony.policy_store import record_policy
from stellakeys.ceremony.ports import Authorization
from stellakeys.ceremony.rules import Recheck, recheck_approvals
from stellakeys.errors import StellaKeysError

__all__ = ["CONCURRENT_EXECUTION_WAIT_SECONDS", "Execution"]

#: How long an executor refused by the key store waits for a concurrent executor of the same
#: ceremony (whose intent is pending) to commit. A rate bound, not a date: monotonic time.
CONCURRENT_EXECUTION_WAIT_SECONDS = 30.0

_log = logging.getLogger("stellakeys.ceremony.service")


class Execution(ServiceBase):
    """The execute half of :class:`~stellakeys.ceremony.service.CeremonyService`."""

    def execute(self, actor: Actor | str, ceremony_id: str) -> Ceremony:
        """Run the ceremony's operation through the facade, exactly once.

        Every approval is verified again first, and again inside the operation's own
        transaction: against the ceremony's current terms, the approvers as they are now and
        the policy in force. Approvals that fail are left out, each with a
        ``signer.ceremony.approval_discounted`` event; below the threshold, execution is
        refused (``signer.ceremony.execution_refused``).

        Raises CeremonyStateError when the threshold is not met, CeremonyExecutedError (one)
        when the ceremony was already executed (by anyone, in any process, also by a
        concurrent executor that won), CeremonyExpiredError after its timeout, and
        whatever the operation itself raises (then nothing is recorded and the ceremony stays
        Approved, so the cause can be fixed and execution retried within the window).
        """
        who = self._as_actor(actor)
        ceremony = self.get(ceremony_id)
        ceremony.require_executable(self._now())
        ceremony, check = self._precheck(who.identity, ceremony_id)
        if ceremony.type == POLICY_UPDATE:
            return self._execute_policy_update(who.identity, ceremony_id, ceremony.digest)
        plan = plan_for(ceremony)
        authorization = Authorization(ceremony, check.counted, who.identity)
        try:
            plan.run(self.operations, authorization)
        except CeremonyExpiredError:
            self._expire_overdue([ceremony_id])
            raise
        except ExecutionRefusedError as refused:
            # Too few approvals verified inside the operation's transaction, which rolled
            # back: the reasons are recorded now, in a transaction of their own.
            raise self._record_refusal(who.identity, refused.ceremony, refused.check) from None
        except StellaKeysError as exc:
            # A concurrent executor may have won between our check and the operation's own
            # (e.g. "key already exists"): report that, not the operation's symptom of it.
            if not isinstance(exc, CeremonyStateError) and self._lost_to_concurrent(ceremony):
                raise CeremonyExecutedError(
                    f"cannot execute ceremony {ceremony_id}: it was executed concurrently ({exc})"
                ) from exc
            raise
        with self._store.read() as tx:
            done = self._load(tx, ceremony_id)
        if done.state is not CeremonyState.EXECUTED:
            # The facade call returned without recording the execution: it did not hand the
            # authorization to its authorizer. A wiring bug, never a silent success.
            raise StellaKeysError(
                f"{plan.operation} did not pass its authorization to the ceremony authorizer;"
                f" {ceremony_id} was not recorded as executed"
            )
        return done

    def _lost_to_concurrent(self, ceremony: Ceremony) -> bool:
        """Whether another executor of ``ceremony`` has executed it (waiting for it if it is
        still at work).

        A key-making operation creates the key in the key store between two transactions
        (decision 0016). Two executors of one ceremony share its intent, so the loser can be
        refused by the key store ("already exists") while the winner has made the key but not
        yet committed the execution, and the ceremony still reads Approved. While that intent
        is pending, wait (bounded) for the winner's commit, so the loser is always told the
        ceremony was executed, never the key store's symptom of it."""
        key_id = ceremony.payload.get("keyId")
        deadline = time.monotonic() + CONCURRENT_EXECUTION_WAIT_SECONDS
        while True:
            with self._store.read() as tx:
                state = self._load(tx, ceremony.ceremony_id).state
                pending = isinstance(key_id, str) and tx.get_intent(key_id) is not None
            if state is CeremonyState.EXECUTED:
                return True
            if not pending or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # --- re-verification ------------------------------------------------------------------

    def recheck(self, ceremony_id: str) -> Recheck:
        """Which approvals of the ceremony would count if it executed now (read-only)."""
        with self._store.read() as tx:
            ceremony = self._load(tx, ceremony_id)
            policy = self.policy(tx)
        return recheck_approvals(ceremony, self.approvers, policy)

    def _precheck(self, actor: str, ceremony_id: str) -> tuple[Ceremony, Recheck]:
        """Refuse (recording why) before touching anything when too few approvals survive."""
        with self._store.read() as tx:
            ceremony = self._load(tx, ceremony_id)
            policy = self.policy(tx)
        check = recheck_approvals(ceremony, self.approvers, policy)
        if not check.ok:
            raise self._record_refusal(actor, ceremony, check)
        return ceremony, check

    def _record_refusal(self, actor: str, ceremony: Ceremony, check: Recheck) -> CeremonyStateError:
        with self._store.transaction() as tx:
            now = self._now()
            audit_discounted(tx, actor, ceremony, check, now)
            self._audit(
                tx,
                EVENT_EXECUTION_REFUSED,
                actor,
                ceremony.ceremony_id,
                now,
                {
                    "ceremonyType": ceremony.type,
                    "validApprovals": len(check.counted),
                    "needed": check.needed,
                    "discounted": [d.to_dict() for d in check.discounted],
                },
            )
        _log.warning(
            "execution of %s refused: approvals failed re-verification", ceremony.ceremony_id
        )
        return CeremonyStateError(check.refusal_text(ceremony))

    def _execute_policy_update(self, actor: str, ceremony_id: str, digest: str) -> Ceremony:
        """Record the ceremony's policy as the store's new version, and the ceremony as
        executed, in one transaction (the weakening is authorised by this very ceremony)."""
        refusal: tuple[Ceremony, Recheck] | None = None
        with self._store.transaction() as tx:
            now = self._now()
            current = self._load(tx, ceremony_id)
            if current.digest != digest:
                raise CeremonyStateError(f"ceremony {ceremony_id} changed during execution")
            current.require_executable(now)
            check = recheck_approvals(current, self.approvers, self.policy(tx))
            if not check.ok:
                refusal = (current, check)
            else:
                new = CeremonyPolicy.from_dict(current.payload["policy"])
                executed = current.executed({"policyDigest": new.digest}, now)
                tx.update_ceremony(executed)  # first: the new version names an executed ceremony
                audit_discounted(tx, actor, current, check, now)
                self._audit(
                    tx,
                    EventType.CEREMONY_EXECUTED,
                    actor,
                    ceremony_id,
                    now,
                    {
                        "ceremonyType": current.type,
                        "operation": POLICY_UPDATE,
                        "currentApprovals": len(check.counted),
                        "threshold": current.threshold,
                        "approvals": [a.approver for a in check.counted],
                        "result": executed.result,
                    },
                )
                record_policy(tx, new, actor, now, ceremony_id=ceremony_id)
        if refusal is not None:
            raise self._record_refusal(actor, *refusal)
        with self._store.read() as tx:
            return self._load(tx, ceremony_id)

"""CeremonyService: create, approve, reject, cancel, execute, list and sweep ceremonies.

Composed at construction: it receives the protected operations it executes (a
:class:`~stellakeys.ceremony.ports.ProtectedOperations`, which the KeyManager facade
satisfies; this package never imports the facade) and the
:class:`~stellakeys.ceremony.authorization.CeremonyAuthorizer` that the facade was built with,
so the rules that decide an approval and those that check an execution read one
configuration and one set of approvers. It installs nothing on the facade.

The service is split by concern: reads and helpers (:mod:`._service_base`), decisions
(:mod:`.decisions`), execution (:mod:`.execution`); creation, cancellation and the sweep
are here. The rules themselves are pure (:mod:`.rules`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from stellakeys.audit import EventType
from stellakeys.ceremony._service_base import OPEN_STATES
from stellakeys.ceremony.actor import SCOPE_APPROVE, SCOPE_CANCEL, Actor
from stellakeys.ceremony.approvers import ApproverRegistry
from stellakeys.ceremony.authorization import CeremonyAuthorizer
from stellakeys.ceremony.decisions import Decisions
from stellakeys.ceremony.errors import CeremonyStateError, UnauthorizedError
from stellakeys.ceremony.execution import Execution
from stellakeys.ceremony.model import (
    Ceremony,
    CeremonyState,
    check_reason,
    new_ceremony_id,
)
from stellakeys.ceremony.operations import normalize_payload
from stellakeys.ceremony.policy import CeremonyPolicy
from stellakeys.ceremony.ports import ProtectedOperations
from stellakeys.ceremony.rules import eligible_now
from stellakeys.errors import PolicyError, StellaKeysError
from stellakeys.notify.ports import Notification, NotificationKind, Notifier
from stellakeys.times import format_time

if TYPE_CHECKING:
    from stellakeys.config import Settings

__all__ = ["OPEN_STATES", "CeremonyService", "ComposedOperations", "SweepReport"]

#: Reminder markers and the fraction of the timeout at which each goes out (runbook: 75%, 90%).
REMINDERS: tuple[tuple[str, float], ...] = (("expiry-90", 0.90), ("expiry-75", 0.75))


class ComposedOperations(ProtectedOperations, Protocol):
    """Protected operations that carry the authorizer they were composed with (the
    KeyManager does)."""

    @property
    def authorizer(self) -> CeremonyAuthorizer: ...


@attrs.frozen
class SweepReport:
    expired: tuple[str, ...] = ()
    #: (ceremony id, marker) of each reminder sent.
    reminders: tuple[tuple[str, str], ...] = ()


class CeremonyService(Decisions, Execution):
    """Dual-control ceremonies over the protected operations of a facade.

    ``authorizer`` must be the one the facade consults (by default ``operations.authorizer``):
    its configuration and approvers are this service's. The policy applied is the store's
    recorded one made stricter by that configuration (:meth:`policy`): a configuration can
    add protection, never remove it.
    """

    def __init__(
        self,
        operations: ProtectedOperations,
        authorizer: CeremonyAuthorizer | None = None,
        *,
        notifier: Notifier | Callable[[], Notifier | None] | None = None,
    ) -> None:
        if authorizer is None:
            found = getattr(operations, "authorizer", None)
            if not isinstance(found, CeremonyAuthorizer):
                raise TypeError("give the CeremonyAuthorizer the operations were built with")
            authorizer = found
        super().__init__(operations, authorizer, notifier=notifier)

    @classmethod
    def from_settings(cls, operations: ComposedOperations, settings: Settings) -> CeremonyService:
        """The service over a facade composed from ``settings`` (its authorizer carries the
        ``ceremonies`` section and the approvers), with notifications from the
        ``notifications`` section, else ``<home>/notifier-config.yaml``."""
        document = settings.document

        def notifier() -> Notifier | None:
            from stellakeys.notify.router import load_router

            router = load_router(document, settings.home)
            if router is None:
                return None
            return router.with_groups(lambda name: service.approvers.members_of_group(name))

        service = cls(operations, operations.authorizer, notifier=notifier)
        return service

    # --- create ---------------------------------------------------------------------------

    def eligible_approvers(
        self,
        ceremony_type: str,
        initiator: str,
        *,
        registry: ApproverRegistry | None = None,
        policy: CeremonyPolicy | None = None,
    ) -> tuple[str, ...]:
        """Who could approve a ceremony of this type started by ``initiator``: members of an
        allowed group (and of the policy's roles), holding ``ceremony:approve``, with a
        registered key when signed approvals are required, and not the initiator unless
        self-approval is allowed."""
        registry = registry or self.approvers
        policy = policy or self.policy()
        return tuple(
            a
            for a in registry.eligible_for(ceremony_type)
            if (policy.allow_self_approval or a != initiator)
            and eligible_now(registry, policy, a, ceremony_type)
            and SCOPE_APPROVE in registry.scopes_of(a)
            and (not policy.require_signed_approvals or registry.keys_of(a))
        )

    def create(
        self,
        actor: Actor | str,
        ceremony_type: str,
        subject: str,
        payload: Mapping[str, Any],
        *,
        threshold: int | None = None,
        required_approvers: int | None = None,
        expires_in: timedelta | None = None,
        expires_at: datetime | None = None,
    ) -> Ceremony:
        """Start a ceremony. The payload is checked and normalised now (see
        :mod:`stellakeys.ceremony.operations`), so approvers sign exactly what will run."""
        who = self._as_actor(actor)
        policy = self.config.policy(ceremony_type)
        in_force = self.policy()
        # The store's minimum may be higher than this configuration's: it wins.
        floor = max(policy.minimum, in_force.rule(ceremony_type).minimum)
        m = max(policy.default, floor) if threshold is None else threshold
        ceiling = max(policy.maximum, floor)
        if not floor <= m <= ceiling:
            raise PolicyError(
                f"threshold {m} for {ceremony_type} is outside {floor}..{ceiling}"
                " (ceremonies.thresholds and the store's recorded policy)"
            )
        n = max(policy.required_approvers, m) if required_approvers is None else required_approvers
        if n < m:
            raise PolicyError(f"requiredApprovers ({n}) must be at least the threshold ({m})")
        if expires_in is not None and expires_at is not None:
            raise PolicyError("give an expiry time or a timeout, not both")
        now = self._now().replace(microsecond=0)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise PolicyError("expiresAt needs a time zone")
            expiry = expires_at.replace(microsecond=0)
        else:
            expiry = now + (expires_in if expires_in is not None else self.config.default_timeout)
        window = expiry - now
        if window <= timedelta(0):
            raise PolicyError("a ceremony must expire in the future")
        if window > self.config.max_timeout:
            raise PolicyError(
                f"the timeout ({window}) exceeds ceremonies.maxTimeout ({self.config.max_timeout})"
            )
        # Everything execution will require is checked here, before anything is written
        # (stellakeys.limits: the same checks the facade applies).
        normalized = normalize_payload(ceremony_type, payload, self.operations)
        registry = self.approvers
        eligible = self.eligible_approvers(
            ceremony_type, who.identity, registry=registry, policy=in_force
        )
        if len(eligible) < n:
            where = registry.source or "approvers.yaml"
            raise PolicyError(
                f"{ceremony_type} needs {n} eligible approvers but {where} gives"
                f" {len(eligible)} ({', '.join(eligible) or 'none'}): approvers must be in a"
                f" group whose operations include {ceremony_type}, hold {SCOPE_APPROVE}"
                + (", and have a registered key" if in_force.require_signed_approvals else "")
                + ("" if in_force.allow_self_approval else ", and not be the initiator")
            )
        ceremony = Ceremony(
            ceremony_id=new_ceremony_id(),
            type=ceremony_type,
            subject=subject.strip(),
            state=CeremonyState.PENDING,
            threshold=m,
            required_approvers=n,
            payload_json=normalized,
            created_at=now,
            expires_at=expiry,
            initiator=who.identity,
            allowed_approvers=eligible,
        )
        with self._store.transaction() as tx:
            tx.insert_ceremony(ceremony)
            self._audit(
                tx,
                EventType.CEREMONY_INITIATED,
                who.identity,
                ceremony.ceremony_id,
                now,
                {
                    "ceremonyType": ceremony.type,
                    "subject": ceremony.subject,
                    "threshold": m,
                    "requiredApprovers": n,
                    "currentApprovals": 0,
                    "expiresAt": format_time(expiry),
                    "digest": ceremony.digest,
                    "payload": ceremony.payload,
                    "allowedApprovers": list(eligible),
                },
            )
        self._send(
            [
                self._notification(
                    NotificationKind.CREATED,
                    ceremony,
                    eligible,
                    f"Approval requested: {ceremony.type} \u2014 {ceremony.subject}",
                    [self._approve_hint(ceremony)],
                )
            ]
        )
        return ceremony

    # --- cancel ---------------------------------------------------------------------------

    def cancel(self, actor: Actor | str, ceremony_id: str, reason: str) -> Ceremony:
        """Cancel before execution: the initiator, or an actor holding ``ceremony:cancel``."""
        who = self._as_actor(actor)
        text = check_reason(reason, "a cancellation")
        error: StellaKeysError | None = None
        notices: builtins.list[Notification] = []
        with self._store.transaction() as tx:
            now = self._now()
            current = self._load(tx, ceremony_id)
            if who.identity != current.initiator and not who.has(SCOPE_CANCEL):
                raise UnauthorizedError(
                    f"{who.identity} may not cancel {ceremony_id}: only its initiator"
                    f" ({current.initiator}) or holders of the {SCOPE_CANCEL} scope can"
                )
            if current.is_overdue(now):
                current = self._expire_in(tx, current, now)
                notices.append(self._expired_notice(current))
            try:
                cancelled = current.cancelled(text, now)
            except CeremonyStateError as exc:
                error = exc
            else:
                tx.update_ceremony(cancelled)
                self._audit(
                    tx,
                    EventType.CEREMONY_CANCELLED,
                    who.identity,
                    ceremony_id,
                    now,
                    {
                        "ceremonyType": current.type,
                        "reason": text,
                        "previousState": current.state.value,
                        "currentApprovals": current.current_approvals,
                        "threshold": current.threshold,
                    },
                )
        self._send(notices)
        if error is not None:
            raise error
        return cancelled

    # --- sweep ----------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Expire overdue ceremonies and send the 75% / 90% reminders, each once.

        A reminder is marked as sent in the same transaction that decides to send it, before
        it is sent: concurrent sweeps never send one twice (at most once; a crash between
        commit and delivery loses that one reminder, which beats spamming approvers)."""
        notices: builtins.list[Notification] = []
        expired: builtins.list[str] = []
        reminders: builtins.list[tuple[str, str]] = []
        with self._store.transaction() as tx:
            now = self._now()
            for current in tx.list_ceremonies(OPEN_STATES):
                if current.is_overdue(now):
                    done = self._expire_in(tx, current, now)
                    expired.append(done.ceremony_id)
                    notices.append(self._expired_notice(done))
                    continue
                if current.state is CeremonyState.APPROVED:
                    continue  # nothing left to ask of approvers
                fraction = current.timeout_fraction(now)
                due = [m for m, at in REMINDERS if fraction >= at]
                if not due or due[0] in current.notifications_sent:
                    continue
                marked = current
                for marker in due:  # crossing 90% also retires the 75% reminder
                    if marker not in marked.notifications_sent:
                        marked = marked.with_notification(marker)
                tx.update_ceremony(marked)
                reminders.append((current.ceremony_id, due[0]))
                percent = due[0].removeprefix("expiry-")
                notices.append(
                    self._notification(
                        NotificationKind.EXPIRY_WARNING,
                        marked,
                        marked.remaining_approvers(),
                        f"Ceremony {marked.ceremony_id} is {percent}% through its timeout"
                        f" ({marked.current_approvals} of {marked.threshold} approvals)",
                        [self._approve_hint(marked)],
                    )
                )
        self._send(notices)
        return SweepReport(tuple(expired), tuple(reminders))

"""The ceremony service's shared half: its collaborators, audit and notification helpers, and
reads with expiry applied. :class:`~stellakeys.ceremony.service.CeremonyService` composes it
with the decision (:mod:`~stellakeys.ceremony.decisions`) and execution
(:mod:`~stellakeys.ceremony.execution`) halves.

Every change happens in one write transaction of the store, which serialises writers (SQLite
``BEGIN IMMEDIATE``, a lock in memory, row locks on PostgreSQL). Inside it the ceremony is read
again, so decisions are taken on committed state. Refusals that must leave a trace (a rejected
approval; an expiry noticed while refusing) are committed first and raised after the commit.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from stellakeys.audit import AuditRecord, EventType
from stellakeys.ceremony.actor import Actor
from stellakeys.ceremony.approvers import ApproverRegistry
from stellakeys.ceremony.authorization import CeremonyAuthorizer
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.model import Ceremony, CeremonyState
from stellakeys.ceremony.policy import CeremonyPolicy
from stellakeys.ceremony.ports import ProtectedOperations
from stellakeys.errors import ConfigError, NotFoundError
from stellakeys.notify.ports import Notification, NotificationKind, Notifier
from stellakeys.times import format_time

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = ["OPEN_STATES", "ServiceBase"]

_log = logging.getLogger("stellakeys.ceremony.service")

OPEN_STATES = frozenset(
    {CeremonyState.PENDING, CeremonyState.PARTIALLY_APPROVED, CeremonyState.APPROVED}
)


class ServiceBase:
    """Collaborators and helpers of the ceremony service (see CeremonyService)."""

    def __init__(
        self,
        operations: ProtectedOperations,
        authorizer: CeremonyAuthorizer,
        *,
        notifier: Notifier | Callable[[], Notifier | None] | None = None,
    ) -> None:
        self.operations = operations
        self.authorizer = authorizer
        self._notifier_source = notifier

    # --- collaborators ---------------------------------------------------------------------

    @property
    def manager(self) -> ProtectedOperations:
        """The protected operations (the facade) this service executes ceremonies through."""
        return self.operations

    @property
    def config(self) -> CeremonyConfig:
        """The ceremony configuration, shared with the authorizer the facade consults."""
        return self.authorizer.config

    @property
    def approvers(self) -> ApproverRegistry:
        """The approvers as they are now (the authorizer's: one source for both halves)."""
        return self.authorizer.approvers

    def policy(self, tx: Transaction | None = None) -> CeremonyPolicy:
        """The policy in force: the store's recorded policy, made stricter by this service's
        configuration (never weaker)."""
        if tx is not None:
            return self.authorizer.policy(tx)
        with self._store.read() as own:
            return self.authorizer.policy(own)

    def record_configured_policy(self, actor: str | None = None) -> CeremonyPolicy | None:
        """Record in the store the stored policy made stricter by this configuration (``db
        migrate`` and store initialisation). Never weakens: returns the recorded policy, or
        None when nothing changed."""
        with self._store.transaction() as tx:
            return self.authorizer.record_configured_policy(
                tx, actor or self.operations.actor, self._now()
            )

    @cached_property
    def notifier(self) -> Notifier | None:
        source = self._notifier_source
        if source is None or hasattr(source, "notify"):
            return cast("Notifier | None", source)
        try:
            return source()
        except ConfigError as exc:
            # A broken notifier file must not stop key operations; say so loudly.
            _log.error("ceremony notifications disabled: %s", exc)
            return None

    def actor(self, identity: str) -> Actor:
        """The actor for ``identity`` with the scopes approvers.yaml gives it (what the CLI
        uses; host applications build their own Actor from their authentication)."""
        return self.approvers.actor(identity)

    def _as_actor(self, actor: Actor | str) -> Actor:
        return actor if isinstance(actor, Actor) else self.actor(actor)

    @property
    def _store(self) -> Store:
        return self.operations.store

    def _now(self) -> datetime:
        return self.operations.clock.now()

    # --- audit and notification helpers ---------------------------------------------------

    def _audit(
        self,
        tx: Transaction,
        event_type: str,
        actor: str,
        ceremony_id: str | None,
        now: datetime,
        details: Mapping[str, Any],
        key_id: str | None = None,
    ) -> None:
        tx.append_audit(
            AuditRecord(
                event_type=event_type,
                actor=actor,
                timestamp=now,
                ceremony_id=ceremony_id,
                key_id=key_id,
                details=dict(details),
            )
        )

    def _send(self, notifications: Iterable[Notification]) -> None:
        notifier = self.notifier
        if notifier is None:
            return
        for n in notifications:
            try:
                notifier.notify(n)
            except Exception as exc:  # a notifier must never undo or block a ceremony step
                _log.warning("notification %s for %s failed: %s", n.kind.value, n.ceremony_id, exc)

    def _notification(
        self,
        kind: NotificationKind,
        ceremony: Ceremony,
        recipients: Sequence[str],
        title: str,
        lines: Sequence[str] = (),
    ) -> Notification:
        body = [
            f"Ceremony: {ceremony.ceremony_id} ({ceremony.type})",
            f"Subject:  {ceremony.subject}",
            f"State:    {ceremony.state.value}",
            f"Approvals: {ceremony.current_approvals} of {ceremony.threshold}"
            f" (required approvers: {ceremony.required_approvers})",
            f"Initiator: {ceremony.initiator}",
            f"Expires:  {format_time(ceremony.expires_at)}",
            f"Digest:   {ceremony.digest}",
            *lines,
        ]
        return Notification(
            kind=kind,
            ceremony_id=ceremony.ceremony_id,
            title=title,
            text="\n".join(body) + "\n",
            recipients=tuple(recipients),
            details={
                "ceremonyId": ceremony.ceremony_id,
                "ceremonyType": ceremony.type,
                "subject": ceremony.subject,
                "state": ceremony.state.value,
                "currentApprovals": ceremony.current_approvals,
                "threshold": ceremony.threshold,
                "requiredApprovers": ceremony.required_approvers,
                "initiator": ceremony.initiator,
                "expiresAt": format_time(ceremony.expires_at),
            },
        )

    def _approve_hint(self, ceremony: Ceremony) -> str:
        return (
            f"To approve: stella ceremony approve --ceremony-id {ceremony.ceremony_id}"
            ' --reason "..." --sign'
        )

    # --- reads (with expiry) --------------------------------------------------------------

    def _load(self, tx: Transaction, ceremony_id: str) -> Ceremony:
        ceremony = tx.get_ceremony(ceremony_id)
        if ceremony is None:
            raise NotFoundError(f"no ceremony {ceremony_id!r}")
        return ceremony

    def _expire_in(self, tx: Transaction, ceremony: Ceremony, now: datetime) -> Ceremony:
        """Record the expiry of an overdue ceremony inside ``tx``."""
        expired = ceremony.expired(now)
        tx.update_ceremony(expired)
        self._audit(
            tx,
            EventType.CEREMONY_EXPIRED,
            self.operations.actor,
            ceremony.ceremony_id,
            now,
            {
                "ceremonyType": ceremony.type,
                "previousState": ceremony.state.value,
                "currentApprovals": ceremony.current_approvals,
                "threshold": ceremony.threshold,
                "expiresAt": format_time(ceremony.expires_at),
            },
        )
        return expired

    def _expired_notice(self, ceremony: Ceremony) -> Notification:
        recipients = (ceremony.initiator, *ceremony.allowed_approvers)
        return self._notification(
            NotificationKind.EXPIRED,
            ceremony,
            tuple(dict.fromkeys(recipients)),
            f"Ceremony {ceremony.ceremony_id} expired: {ceremony.subject}",
            [
                "The timeout was reached without execution. Create a new ceremony if the"
                " operation is still needed."
            ],
        )

    def _expire_overdue(self, ceremony_ids: Iterable[str]) -> list[Ceremony]:
        """Persist the expiry of each overdue ceremony (one transaction), then notify."""
        ids = list(ceremony_ids)
        if not ids:
            return []
        expired: list[Ceremony] = []
        with self._store.transaction() as tx:
            now = self._now()
            for ceremony_id in ids:
                current = tx.get_ceremony(ceremony_id)
                if current is not None and current.is_overdue(now):
                    expired.append(self._expire_in(tx, current, now))
        self._send(self._expired_notice(c) for c in expired)
        return expired

    def get(self, ceremony_id: str) -> Ceremony:
        """The ceremony, with its expiry applied (and recorded) if its timeout has passed."""
        with self._store.read() as tx:
            ceremony = self._load(tx, ceremony_id)
        if ceremony.is_overdue(self._now()):
            self._expire_overdue([ceremony_id])
            with self._store.read() as tx:
                ceremony = self._load(tx, ceremony_id)
        return ceremony

    def list(self, states: Iterable[CeremonyState] | None = None) -> builtins.list[Ceremony]:
        """Ceremonies (oldest first), optionally only those in ``states``, expiry applied."""
        wanted = frozenset(states) if states is not None else None
        fetch = None if wanted is None else wanted | OPEN_STATES
        with self._store.read() as tx:
            found = tx.list_ceremonies(fetch)
        now = self._now()
        overdue = [c.ceremony_id for c in found if c.is_overdue(now)]
        if overdue:
            updated = {c.ceremony_id: c for c in self._expire_overdue(overdue)}
            found = [updated.get(c.ceremony_id, c) for c in found]
            # Another process may have expired it first: read the survivors back.
            with self._store.read() as tx:
                found = [self._load(tx, c.ceremony_id) for c in found]
        return [c for c in found if wanted is None or c.state in wanted]

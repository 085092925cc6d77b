"""CeremonyService: create, approve, reject, cancel, execute, list, sweep, and the guard.

Every change happens in one write transaction of the store, which serialises writers (SQLite
``BEGIN IMMEDIATE``, a lock in memory, row locks on PostgreSQL). Inside it the ceremony is read
again, so decisions are taken on committed state: two approvers racing for the last approval
both get serialised, exactly one of them reaches the threshold, and the other finds the
ceremony Approved and is refused.

Execution goes through the KeyManager facade and its ``operation_guard`` hook. The service
installs :meth:`CeremonyService.guard` on the manager; :meth:`execute` marks the current
context (a ``contextvars.ContextVar``, so it is per thread and per task) as executing one
ceremony and calls the facade method the ceremony's payload names. The facade calls the guard
inside its own write transaction; the guard re-reads the ceremony there, checks it is still
Approved and within its window, and writes Executed, the result and the ``executed`` audit
event in that same transaction. The operation and the ceremony's execution therefore commit
together or not at all, and a second executor (another thread, another process) blocks on the
write lock, then finds Executed and is refused, rolling back its operation.

Refusals that must leave a trace (a rejected approval; an expiry noticed while refusing) are
committed first and raised after the commit.
"""

from __future__ import annotations

import builtins
import contextvars
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import attrs

from stellakeys.audit import AuditRecord, EventType
from stellakeys.ceremony.actor import SCOPE_APPROVE, SCOPE_CANCEL, Actor
from stellakeys.ceremony.approvers import ApproverFile, ApproverRegistry
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.errors import (
    ApprovalRejectedError,
    CeremonyExpiredError,
    CeremonyStateError,
    UnauthorizedError,
)
from stellakeys.ceremony.model import (
    POLICY_UPDATE,
    Approval,
    Ceremony,
    CeremonyState,
    Decision,
    check_reason,
    new_approval_id,
    new_ceremony_id,
)
from stellakeys.ceremony.operations import (
    PROTECTED_OPERATIONS,
    normalize_payload,
    plan_for,
    result_for,
)
from stellakeys.ceremony.policy import (
    EVENT_APPROVAL_DISCOUNTED,
    EVENT_EXECUTION_REFUSED,
    CeremonyPolicy,
)
from stellakeys.ceremony.policy_store import effective_policy, protected_message, record_policy
from stellakeys.ceremony.recheck import Recheck, eligible_now, recheck_approvals
from stellakeys.ceremony.statement import ApprovalStatement, verify_statement
from stellakeys.dsse import Envelope
from stellakeys.errors import (
    ConfigError,
    InvalidSignatureError,
    MalformedEnvelopeError,
    NotFoundError,
    PolicyError,
    StellaKeysError,
)
from stellakeys.notify.ports import Notification, NotificationKind, Notifier
from stellakeys.times import format_time

if TYPE_CHECKING:
    from stellakeys.config import Settings
    from stellakeys.manager import KeyManager
    from stellakeys.storage.ports import Transaction

__all__ = ["CeremonyService", "SweepReport"]

_log = logging.getLogger(__name__)

OPEN_STATES = frozenset(
    {CeremonyState.PENDING, CeremonyState.PARTIALLY_APPROVED, CeremonyState.APPROVED}
)
#: Reminder markers and the fraction of the timeout at which each goes out (runbook: 75%, 90%).
REMINDERS: tuple[tuple[str, float], ...] = (("expiry-90", 0.90), ("expiry-75", 0.75))


@attrs.define
class _Execution:
    """What the current context is executing; read by the guard."""

    service: CeremonyService
    ceremony_id: str
    digest: str
    operation: str
    expected: Mapping[str, Any]
    actor: str
    recorded: bool = False
    #: Set by the guard when re-verification left too few approvals: execute() records why
    #: after the operation's transaction has rolled back.
    refusal: tuple[Ceremony, Recheck] | None = None


_EXECUTING: contextvars.ContextVar[_Execution | None] = contextvars.ContextVar(
    "stellakeys_ceremony_execution", default=None
)


@attrs.frozen
class SweepReport:
    expired: tuple[str, ...] = ()
    #: (ceremony id, marker) of each reminder sent.
    reminders: tuple[tuple[str, str], ...] = ()


class CeremonyService:
    """Dual-control ceremonies over a :class:`~stellakeys.manager.KeyManager`.

    Constructing one installs its guard on the manager (``install_guard=False`` to opt out,
    e.g. for a read-only tool). ``approvers`` may be a registry or a zero-argument loader,
    called at every decision (:class:`~stellakeys.ceremony.approvers.ApproverFile` re-reads
    approvers.yaml when it changed), so a removed approver never counts in a running service.

    The policy applied is the store's recorded one made stricter by ``config``
    (:meth:`policy`): a configuration can add protection, never remove it.
    """

    def __init__(
        self,
        manager: KeyManager,
        config: CeremonyConfig | None = None,
        approvers: ApproverRegistry | Callable[[], ApproverRegistry] | None = None,
        notifier: Notifier | Callable[[], Notifier | None] | None = None,
        *,
        install_guard: bool = True,
    ) -> None:
        self.manager = manager
        self.config = config or CeremonyConfig()
        self._approvers_source = approvers
        self._notifier_source = notifier
        if install_guard:
            manager.operation_guard = self.guard
            manager.authorising_ceremony = self._executing_ceremony

    @classmethod
    def from_settings(
        cls, manager: KeyManager, settings: Settings, *, install_guard: bool = True
    ) -> CeremonyService:
        """Configured from the signer configuration document and files in the home:
        ``ceremonies`` section, approvers (``ceremonies.approvers``, else ``approverGroups`` /
        ``approvers`` in the document, else ``<home>/approvers.yaml``), notifications
        (``notifications`` section, else ``<home>/notifier-config.yaml``)."""
        config = CeremonyConfig.from_document(settings.document, settings.home)
        document = settings.document

        inline = {k: document[k] for k in ("approverGroups", "approvers") if k in document}
        approvers: ApproverRegistry | Callable[[], ApproverRegistry]
        if config.approvers_path is None and inline:
            approvers = ApproverRegistry.from_dict(inline, base_dir=settings.home)
        else:
            # Re-read at every decision when it changed (never cached for the process's life).
            approvers = ApproverFile(config.approvers_path or settings.home / "approvers.yaml").get

        def notifier() -> Notifier | None:
            from stellakeys.notify.router import load_router

            router = load_router(document, settings.home)
            if router is None:
                return None
            return router.with_groups(lambda name: self_ref.approvers.members_of_group(name))

        self_ref = cls(manager, config, approvers, notifier, install_guard=install_guard)
        return self_ref

    # --- collaborators ---------------------------------------------------------------------

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

    @approvers.setter
    def approvers(self, registry: ApproverRegistry | Callable[[], ApproverRegistry]) -> None:
        self._approvers_source = registry

    @property
    def _configured_policy(self) -> CeremonyPolicy:
        return CeremonyPolicy.from_config(self.config)

    def policy(self, tx: Transaction | None = None) -> CeremonyPolicy:
        """The policy in force: the store's recorded policy, made stricter by this service's
        configuration (never weaker)."""
        if tx is not None:
            return effective_policy(tx, self._configured_policy)
        with self._store.read() as own:
            return effective_policy(own, self._configured_policy)

    def record_configured_policy(self, actor: str | None = None) -> CeremonyPolicy | None:
        """Record in the store the stored policy made stricter by this configuration (``db
        migrate`` and store initialisation). Never weakens: returns the recorded policy, or
        None when nothing changed."""
        with self._store.transaction() as tx:
            merged = self.policy(tx)
            done = record_policy(tx, merged, actor or self.manager.actor, self._now())
        return merged if done is not None else None

    def _executing_ceremony(self) -> str | None:
        execution = _EXECUTING.get()
        return (
            execution.ceremony_id if execution is not None and execution.service is self else None
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
    def _store(self) -> Any:
        return self.manager.store

    def _now(self) -> datetime:
        return self.manager.clock.now()

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
            self.manager.actor,
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
        normalized = normalize_payload(ceremony_type, payload, self.manager)
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

    # --- approve / reject -----------------------------------------------------------------

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
        code: str,
        message: str,
        extra: Mapping[str, Any] | None = None,
        tx: Transaction | None = None,
    ) -> ApprovalRejectedError:
        """Audit a refused approval (in ``tx`` or a transaction of its own); return the error
        for the caller to raise once the audit is committed."""
        details: dict[str, Any] = {
            "ceremonyType": ceremony.type if ceremony else None,
            "approver": actor.identity,
            "code": code,
            "reason": message,
            "currentApprovals": ceremony.current_approvals if ceremony else None,
            "threshold": ceremony.threshold if ceremony else None,
            **(extra or {}),
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
        return ApprovalRejectedError(code, message)

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
            raise self._refuse(
                actor, None, ceremony_id, "unknown-ceremony", f"no ceremony {ceremony_id!r}"
            )
        registry = self.approvers  # one snapshot for this decision
        who = actor.identity
        # Authorisation first: it needs nothing from the request.
        if not actor.has(SCOPE_APPROVE):
            raise self._refuse(
                actor,
                ceremony,
                ceremony_id,
                "missing-scope",
                f"{who} does not hold the {SCOPE_APPROVE} scope",
            )
        if who == ceremony.initiator and not policy.allow_self_approval:
            raise self._refuse(
                actor,
                ceremony,
                ceremony_id,
                "initiator",
                f"{who} initiated {ceremony_id} and cannot approve it: a different approver"
                " must approve",
            )
        if who not in ceremony.allowed_approvers or not eligible_now(
            registry, policy, who, ceremony.type
        ):
            raise self._refuse(
                actor,
                ceremony,
                ceremony_id,
                "not-eligible",
                f"{who} is not in the allowed approvers of {ceremony_id}: approvers come from"
                f" the approver groups whose operations include {ceremony.type}",
            )
        signature: dict[str, Any] = {}
        envelope_json: bytes | None = None
        if envelope is None:
            if policy.require_signed_approvals:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "unsigned",
                    "signed approvals are required (ceremonies.requireSignedApprovals):"
                    " sign the approval statement with your registered key (--sign)",
                )
            if decision is None:
                raise PolicyError("an unsigned decision must say approve or reject")
            try:
                text = check_reason(reason or "", "an approval")
            except PolicyError as exc:
                raise self._refuse(
                    actor, ceremony, ceremony_id, "malformed-statement", str(exc)
                ) from None
            chosen = decision
        else:
            try:
                statement = ApprovalStatement.from_envelope(envelope)
            except MalformedEnvelopeError as exc:
                raise self._refuse(
                    actor, ceremony, ceremony_id, "malformed-statement", str(exc)
                ) from None
            if statement.ceremony_id != ceremony.ceremony_id:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "wrong-ceremony",
                    f"the signed statement is for {statement.ceremony_id}, not"
                    f" {ceremony.ceremony_id} (a replayed approval?)",
                )
            if statement.approver != who:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "approver-mismatch",
                    f"the signed statement names {statement.approver}, but {who} submitted it",
                )
            try:
                verified = verify_statement(envelope, registry.keyring_of(who))
            except InvalidSignatureError as exc:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "invalid-signature",
                    f"invalid signature: {exc}; re-sign with the correct key (stella auth keys"
                    " list shows the registered ones)",
                ) from None
            signature = {
                "signatureAlgorithm": verified.key.algorithm,
                "signatureKeyId": verified.key.key_id,
                "signatureFingerprint": verified.key.fingerprint,
            }
            if statement.ceremony_digest != ceremony.digest:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "payload-mismatch",
                    f"the signed statement approves other terms ({statement.ceremony_digest})"
                    f" than the ceremony's ({ceremony.digest}): type, subject, payload,"
                    " threshold or expiry differ",
                    signature,
                )
            if decision is not None and statement.decision is not decision:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "decision-mismatch",
                    f"the signed statement says {statement.decision.value}, not {decision.value}",
                    signature,
                )
            if reason is not None and reason.strip() != statement.reason:
                raise self._refuse(
                    actor,
                    ceremony,
                    ceremony_id,
                    "reason-mismatch",
                    "the reason given differs from the signed one",
                    signature,
                )
            chosen = statement.decision
            text = statement.reason
            envelope_json = envelope.to_json()

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
                envelope_json=envelope_json,
            )
            if current.is_overdue(now):
                current = self._expire_in(tx, current, now)
                notices.append(self._expired_notice(current))
            try:
                updated, reached = current.with_decision(approval, now)
            except ApprovalRejectedError as exc:
                error = self._refuse(
                    actor, current, ceremony_id, exc.code, exc.reason, signature, tx=tx
                )
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

    # --- execute and the guard ------------------------------------------------------------

    def execute(self, actor: Actor | str, ceremony_id: str) -> Ceremony:
        """Run the ceremony's operation through the facade, exactly once.

        Every approval is verified again first, and again inside the operation's own
        transaction (:mod:`stellakeys.ceremony.recheck`): against the ceremony's current
        terms, the approvers as they are now and the policy in force. Approvals that fail are
        left out, each with a ``signer.ceremony.approval_discounted`` event; below the
        threshold, execution is refused (``signer.ceremony.execution_refused``).

        Raises CeremonyStateError when the threshold is not met or the ceremony was already
        executed (by anyone, in any process), CeremonyExpiredError after its timeout, and
        whatever the operation itself raises (then nothing is recorded and the ceremony stays
        Approved, so the cause can be fixed and execution retried within the window).
        """
        who = self._as_actor(actor)
        if _EXECUTING.get() is not None:
            raise PolicyError("a ceremony is already executing in this context")
        ceremony = self.get(ceremony_id)
        ceremony.require_executable(self._now())
        self._precheck(who.identity, ceremony_id)
        if ceremony.type == POLICY_UPDATE:
            return self._execute_policy_update(who.identity, ceremony_id, ceremony.digest)
        plan = plan_for(ceremony)
        execution = _Execution(
            self, ceremony_id, ceremony.digest, plan.operation, plan.expected, who.identity
        )
        token = _EXECUTING.set(execution)
        try:
            plan.run(self.manager)
        except CeremonyExpiredError:
            self._expire_overdue([ceremony_id])
            raise
        except StellaKeysError as exc:
            if execution.refusal is not None:
                # The guard found too few valid approvals; its transaction rolled back, so
                # the reasons are recorded now, in a transaction of their own.
                seen, check = execution.refusal
                raise self._record_refusal(who.identity, seen, check) from None
            # A concurrent executor may have won between our check and the operation's own
            # (e.g. "key already exists"): report that, not the operation's symptom of it.
            with self._store.read() as tx:
                now_state = self._load(tx, ceremony_id)
            if now_state.state is CeremonyState.EXECUTED and not isinstance(
                exc, CeremonyStateError
            ):
                raise CeremonyStateError(
                    f"cannot execute ceremony {ceremony_id}: it was executed concurrently ({exc})"
                ) from exc
            raise
        finally:
            _EXECUTING.reset(token)
        if not execution.recorded:
            # The facade call returned without consulting the guard: a wiring bug, never a
            # silent success.
            raise StellaKeysError(
                f"{plan.operation} did not pass through the ceremony guard; {ceremony_id} was"
                " not recorded as executed"
            )
        with self._store.read() as tx:
            return self._load(tx, ceremony_id)

    # --- re-verification ------------------------------------------------------------------

    def recheck(self, ceremony_id: str) -> Recheck:
        """Which approvals of the ceremony would count if it executed now (read-only)."""
        with self._store.read() as tx:
            ceremony = self._load(tx, ceremony_id)
            policy = self.policy(tx)
        return recheck_approvals(ceremony, self.approvers, policy)

    def _precheck(self, actor: str, ceremony_id: str) -> None:
        """Refuse (recording why) before touching anything when too few approvals survive."""
        with self._store.read() as tx:
            ceremony = self._load(tx, ceremony_id)
            policy = self.policy(tx)
        check = recheck_approvals(ceremony, self.approvers, policy)
        if not check.ok:
            raise self._record_refusal(actor, ceremony, check)

    @staticmethod
    def _refusal_text(ceremony: Ceremony, check: Recheck) -> str:
        why = "; ".join(f"{d.approval.approver}: {d.reason}" for d in check.discounted)
        return (
            f"cannot execute ceremony {ceremony.ceremony_id}: {len(check.counted)} of the"
            f" {check.needed} approvals needed verify now"
            + (f" (not counted: {why})" if why else "")
        )

    def _audit_discounted(
        self, tx: Transaction, actor: str, ceremony: Ceremony, check: Recheck, now: datetime
    ) -> None:
        for d in check.discounted:
            self._audit(
                tx,
                EVENT_APPROVAL_DISCOUNTED,
                actor,
                ceremony.ceremony_id,
                now,
                {"ceremonyType": ceremony.type, **d.to_dict()},
            )

    def _record_refusal(self, actor: str, ceremony: Ceremony, check: Recheck) -> CeremonyStateError:
        with self._store.transaction() as tx:
            now = self._now()
            self._audit_discounted(tx, actor, ceremony, check, now)
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
        return CeremonyStateError(self._refusal_text(ceremony, check))

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
                self._audit_discounted(tx, actor, current, check, now)
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

    def guard(self, tx: Transaction, operation: str, details: dict[str, Any]) -> None:
        """The KeyManager's ``operation_guard``: refuse protected operations outside an
        executing ceremony (when the policy in force protects them), and record the execution
        of the one that is, after verifying its approvals again inside ``tx``."""
        execution = _EXECUTING.get()
        if execution is None or execution.service is not self:
            if operation in PROTECTED_OPERATIONS and self.policy(tx).requires(operation):
                raise PolicyError(protected_message(operation))
            return
        if operation != execution.operation or any(
            details.get(k) != v for k, v in execution.expected.items()
        ):
            raise PolicyError(
                f"ceremony {execution.ceremony_id} authorises {execution.operation} with its"
                f" payload, not this {operation}"
            )
        if execution.recorded:
            raise PolicyError(f"ceremony {execution.ceremony_id} has already been executed")
        now = self._now()
        ceremony = self._load(tx, execution.ceremony_id)
        if ceremony.digest != execution.digest:
            raise CeremonyStateError(f"ceremony {execution.ceremony_id} changed during execution")
        ceremony.require_executable(now)  # a concurrent executor committed first: refused here
        policy = self.policy(tx)
        check = recheck_approvals(ceremony, self.approvers, policy)
        if not check.ok:
            execution.refusal = (ceremony, check)
            raise CeremonyStateError(self._refusal_text(ceremony, check))
        if details.get("preflight"):
            return
        result = result_for(ceremony, details, tx, now)
        executed = ceremony.executed(result, now)
        tx.update_ceremony(executed)
        self._audit_discounted(tx, execution.actor, ceremony, check, now)
        self._audit(
            tx,
            EventType.CEREMONY_EXECUTED,
            execution.actor,
            ceremony.ceremony_id,
            now,
            {
                "ceremonyType": ceremony.type,
                "operation": operation,
                "currentApprovals": len(check.counted),
                "threshold": ceremony.threshold,
                "approvals": [a.approver for a in check.counted],
                "policyDigest": policy.digest,
                "result": result,
            },
            key_id=result.get("keyId") if isinstance(result.get("keyId"), str) else None,
        )
        execution.recorded = True

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

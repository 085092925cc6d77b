"""The ceremony: an M-of-N dual-control request, its approvals, and its state machine.

Pure: nothing here reads a clock or does I/O. Every function that depends on time takes
``now``, and every change returns a new :class:`Ceremony` (they are frozen values), so the
service can compute a change, check it, and persist it inside one transaction.

States and transitions are the dual-control runbook's::

    Pending --approval--> PartiallyApproved --threshold reached--> Approved --execute--> Executed
    Pending | PartiallyApproved | Approved --timeout--> Expired
    Pending | PartiallyApproved | Approved --cancel--> Cancelled

The runbook's diagram lists the timeout and cancel paths from Pending and PartiallyApproved;
its state table defines Expired as "timeout reached *without execution*" and Cancelled as
"explicitly cancelled *before execution*", and its cancel section says "ceremonies can be
cancelled before execution". An Approved ceremony has not been executed, so both apply to it
too: an approval is given for a bounded window (the expiry is part of what approvers sign), and
an approved operation that must not happen after all (a compromised approver) can be stopped.
See docs/decisions/0006-ceremonies.md. Executed, Expired and Cancelled are terminal.

Thresholds are at least 2: a one-person "ceremony" is not dual control, and the runbook's
state machine has no Pending -> Approved edge.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from stellakeys.ceremony._canonical import canonical_json, check_canonical_value
from stellakeys.ceremony.errors import (
    ApprovalRejectedError,
    CeremonyExecutedError,
    CeremonyExpiredError,
    CeremonyStateError,
    InvalidTransitionError,
)
from stellakeys.errors import PolicyError
from stellakeys.times import format_time

__all__ = [
    "CEREMONY_TYPES",
    "HSM_KEY_GENERATION",
    "KEY_REVOCATION",
    "KEY_ROTATION",
    "POLICY_UPDATE",
    "RECOVERY_KEY_ACTIVATION",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "TRUST_ANCHOR_UPDATE",
    "Approval",
    "Ceremony",
    "CeremonyState",
    "Decision",
    "new_approval_id",
    "new_ceremony_id",
    "transition",
]

KEY_ROTATION = "key-rotation"
KEY_REVOCATION = "key-revocation"
TRUST_ANCHOR_UPDATE = "trust-anchor-update"
HSM_KEY_GENERATION = "hsm-key-generation"
RECOVERY_KEY_ACTIVATION = "recovery-key-activation"
#: Weakening the store's dual-control policy is itself dual-controlled (decision 0015).
POLICY_UPDATE = "ceremony-policy-update"
#: The ceremony types of the runbook, in its table's order, then stellakeys' own.
CEREMONY_TYPES: tuple[str, ...] = (
    KEY_ROTATION,
    TRUST_ANCHOR_UPDATE,
    KEY_REVOCATION,
    HSM_KEY_GENERATION,
    RECOVERY_KEY_ACTIVATION,
    POLICY_UPDATE,
)

MAX_SUBJECT = 500
#: The runbook's execution result fields, shown first and in this order.
_RESULT_ORDER = ("keyId", "publicKey", "fingerprint", "activatedAt")
MAX_REASON = 2000
_CEREMONY_ID = re.compile(r"cer-[0-9a-f]{16}")
_APPROVAL_ID = re.compile(r"apr-[0-9a-f]{16}")


def new_ceremony_id() -> str:
    """``cer-`` and 64 random bits: unguessable, so an approval cannot be pre-signed for a
    ceremony that does not exist yet."""
    return "cer-" + secrets.token_hex(8)


def new_approval_id() -> str:
    return "apr-" + secrets.token_hex(8)


def is_ceremony_id(text: str) -> bool:
    return _CEREMONY_ID.fullmatch(text) is not None


class CeremonyState(enum.Enum):
    PENDING = "Pending"
    PARTIALLY_APPROVED = "PartiallyApproved"
    APPROVED = "Approved"
    EXECUTED = "Executed"
    EXPIRED = "Expired"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def cli_name(self) -> str:
        """``partially-approved``: the spelling of the runbook's ``--state`` filter."""
        return re.sub(r"(?<!^)(?=[A-Z])", "-", self.value).lower()

    @classmethod
    def parse(cls, text: str) -> CeremonyState:
        """``PartiallyApproved``, ``partially-approved`` or ``partially_approved`` (any case)."""
        wanted = text.strip().replace("-", "").replace("_", "").lower()
        for state in cls:
            if state.value.lower() == wanted:
                return state
        known = ", ".join(s.cli_name for s in cls)
        raise PolicyError(f"unknown ceremony state {text!r}; known: {known}")


TERMINAL_STATES = frozenset(
    {CeremonyState.EXECUTED, CeremonyState.EXPIRED, CeremonyState.CANCELLED}
)
#: States in which approvals are collected.
_COLLECTING = frozenset({CeremonyState.PENDING, CeremonyState.PARTIALLY_APPROVED})

_S = CeremonyState
#: Every allowed (from, to) pair; :func:`transition` refuses everything else.
TRANSITIONS: frozenset[tuple[CeremonyState, CeremonyState]] = frozenset(
    {
        (_S.PENDING, _S.PARTIALLY_APPROVED),
        (_S.PARTIALLY_APPROVED, _S.APPROVED),
        (_S.APPROVED, _S.EXECUTED),
        (_S.PENDING, _S.EXPIRED),
        (_S.PARTIALLY_APPROVED, _S.EXPIRED),
        (_S.APPROVED, _S.EXPIRED),
        (_S.PENDING, _S.CANCELLED),
        (_S.PARTIALLY_APPROVED, _S.CANCELLED),
        (_S.APPROVED, _S.CANCELLED),
    }
)


def transition(current: CeremonyState, target: CeremonyState) -> CeremonyState:
    """``target`` if the state machine has the edge ``current -> target``, else raise."""
    if (current, target) not in TRANSITIONS:
        raise InvalidTransitionError(f"a ceremony cannot go from {current.value} to {target.value}")
    return target


class Decision(enum.Enum):
    APPROVE = "approve"
    REJECT = "reject"

    @classmethod
    def parse(cls, text: str) -> Decision:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise PolicyError(f"decision must be 'approve' or 'reject', not {text!r}") from None


def _aware(_: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be timezone-aware")


@attrs.frozen
class Approval:
    """One approver's decision on one ceremony. An approver decides once per ceremony."""

    approval_id: str
    ceremony_id: str
    approver: str
    decision: Decision
    reason: str
    approved_at: datetime = attrs.field(validator=_aware)
    #: True when a DSSE-signed statement verified against the approver's registered key; False
    #: for an unsigned approval (accepted only when ``requireSignedApprovals`` is off).
    signature_valid: bool = False
    signature_key_id: str | None = None
    signature_algorithm: str | None = None
    signature_fingerprint: str | None = None
    #: The envelope exactly as submitted, so anyone can verify the approval again later.
    envelope_json: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        """The runbook's ``approval`` object (plus decision and which key signed)."""
        return {
            "approvalId": self.approval_id,
            "approver": self.approver,
            "approvedAt": format_time(self.approved_at),
            "reason": self.reason,
            "signatureValid": self.signature_valid,
            "decision": self.decision.value,
            "signatureKeyId": self.signature_key_id,
            "signatureAlgorithm": self.signature_algorithm,
        }


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _approvals(value: Iterable[Approval]) -> tuple[Approval, ...]:
    return tuple(value)


def _payload_json(value: Mapping[str, Any] | bytes) -> bytes:
    if isinstance(value, bytes):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise PolicyError("the ceremony payload must be a JSON object")
    check_canonical_value(value)
    return canonical_json(value)


def _opt_json(value: Mapping[str, Any] | bytes | None) -> bytes | None:
    return None if value is None else _payload_json(value)


@attrs.frozen
class Ceremony:
    """A dual-control request. Payload and result are kept as canonical JSON bytes, so the
    value is truly immutable and its digest cannot drift; read them through
    :attr:`payload` and :attr:`result`."""

    ceremony_id: str
    type: str
    subject: str
    state: CeremonyState
    threshold: int
    required_approvers: int
    payload_json: bytes = attrs.field(converter=_payload_json)
    created_at: datetime = attrs.field(validator=_aware)
    expires_at: datetime = attrs.field(validator=_aware)
    initiator: str
    #: Who may approve: the eligible members of the approver groups for this type, fixed at
    #: creation ("the ceremony's allowed approvers list" of the runbook).
    allowed_approvers: tuple[str, ...] = attrs.field(converter=_strings)
    approvals: tuple[Approval, ...] = attrs.field(default=(), converter=_approvals)
    executed_at: datetime | None = attrs.field(default=None, validator=_aware)
    result_json: bytes | None = attrs.field(default=None, converter=_opt_json)
    cancelled_at: datetime | None = attrs.field(default=None, validator=_aware)
    cancel_reason: str | None = None
    #: Markers of one-off notifications already sent (``expiry-75``, ``expiry-90``), so a
    #: reminder goes out once however many sweeps run.
    notifications_sent: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    def __attrs_post_init__(self) -> None:
        if not is_ceremony_id(self.ceremony_id):
            raise PolicyError(f"invalid ceremony id {self.ceremony_id!r}")
        if not 2 <= self.threshold <= self.required_approvers:
            raise PolicyError(
                f"threshold must be at least 2 and at most requiredApprovers"
                f" ({self.threshold} of {self.required_approvers})"
            )
        if self.expires_at <= self.created_at:
            raise PolicyError("a ceremony must expire after it is created")
        if not self.subject.strip() or len(self.subject) > MAX_SUBJECT:
            raise PolicyError(f"subject must be 1 to {MAX_SUBJECT} characters")

    # --- views ----------------------------------------------------------------------------

    @property
    def payload(self) -> dict[str, Any]:
        """A fresh copy of the payload (changing it changes nothing stored)."""
        value: dict[str, Any] = json.loads(self.payload_json)
        return value

    @property
    def result(self) -> dict[str, Any] | None:
        """The execution result, with the runbook's fields first in the runbook's order."""
        if self.result_json is None:
            return None
        value: dict[str, Any] = json.loads(self.result_json)
        first = {k: value.pop(k) for k in _RESULT_ORDER if k in value}
        return {**first, **value}

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` over the canonical JSON of what approvers agree to: type, subject,
        payload, threshold, requiredApprovers and expiresAt. A signed approval names this
        digest, so it does not transfer to a ceremony with any of these changed."""
        return ceremony_digest(
            self.type,
            self.subject,
            self.payload,
            self.threshold,
            self.required_approvers,
            self.expires_at,
        )

    @property
    def current_approvals(self) -> int:
        return sum(1 for a in self.approvals if a.decision is Decision.APPROVE)

    @property
    def rejections(self) -> int:
        return sum(1 for a in self.approvals if a.decision is Decision.REJECT)

    def decision_of(self, approver: str) -> Approval | None:
        return next((a for a in self.approvals if a.approver == approver), None)

    def remaining_approvers(self) -> tuple[str, ...]:
        """Allowed approvers who have not decided yet."""
        decided = {a.approver for a in self.approvals}
        return tuple(a for a in self.allowed_approvers if a not in decided)

    def is_overdue(self, now: datetime) -> bool:
        """True when the timeout has passed and the ceremony is not yet terminal: the next read
        or write must record it as Expired. Validity is half-open: expired *at* expiresAt."""
        return not self.state.terminal and now >= self.expires_at

    def effective_state(self, now: datetime) -> CeremonyState:
        return CeremonyState.EXPIRED if self.is_overdue(now) else self.state

    def timeout_fraction(self, now: datetime) -> float:
        """How much of the ceremony's window has passed (0.0 at creation, 1.0 at expiry)."""
        window = (self.expires_at - self.created_at).total_seconds()
        return (now - self.created_at).total_seconds() / window

    # --- JSON shapes of the runbook -----------------------------------------------------------

    def create_response(self) -> dict[str, Any]:
        return {
            "ceremonyId": self.ceremony_id,
            "type": self.type,
            "state": self.state.value,
            "threshold": self.threshold,
            "requiredApprovers": self.required_approvers,
            "currentApprovals": self.current_approvals,
            "createdAt": format_time(self.created_at),
            "expiresAt": format_time(self.expires_at),
            "initiator": self.initiator,
        }

    def approval_response(self, approval: Approval) -> dict[str, Any]:
        body = {
            "approvalId": approval.approval_id,
            "approver": approval.approver,
            "approvedAt": format_time(approval.approved_at),
            "reason": approval.reason,
            "signatureValid": approval.signature_valid,
        }
        if approval.decision is not Decision.APPROVE:
            body["decision"] = approval.decision.value
        return {
            "ceremonyId": self.ceremony_id,
            "state": self.state.value,
            "currentApprovals": self.current_approvals,
            "threshold": self.threshold,
            "approval": body,
        }

    def execution_response(self) -> dict[str, Any]:
        return {
            "ceremonyId": self.ceremony_id,
            "state": self.state.value,
            "executedAt": format_time(self.executed_at) if self.executed_at else None,
            "result": self.result,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything: the runbook's create response plus subject, payload, approvals, result."""
        return {
            **self.create_response(),
            "subject": self.subject,
            "payload": self.payload,
            "digest": self.digest,
            "allowedApprovers": list(self.allowed_approvers),
            "rejections": self.rejections,
            "approvals": [a.to_dict() for a in self.approvals],
            "executedAt": format_time(self.executed_at) if self.executed_at else None,
            "result": self.result,
            "cancelledAt": format_time(self.cancelled_at) if self.cancelled_at else None,
            "cancelReason": self.cancel_reason,
        }

    # --- changes (pure) -------------------------------------------------------------------

    def _require_not_overdue(self, now: datetime) -> None:
        if self.is_overdue(now):
            raise CeremonyExpiredError(
                f"ceremony {self.ceremony_id} expired at {format_time(self.expires_at)}"
                " (timeout reached): create a new ceremony"
            )

    def with_decision(self, approval: Approval, now: datetime) -> tuple[Ceremony, bool]:
        """The ceremony with ``approval`` recorded, and whether it reached its threshold.

        Raises :class:`ApprovalRejectedError` when the ceremony does not collect decisions any
        more or the approver has already decided.
        """
        if approval.ceremony_id != self.ceremony_id:
            raise ApprovalRejectedError(
                "wrong-ceremony", f"the approval is for {approval.ceremony_id}"
            )
        if self.is_overdue(now) or self.state is CeremonyState.EXPIRED:
            raise ApprovalRejectedError(
                "expired",
                f"ceremony {self.ceremony_id} expired at {format_time(self.expires_at)}:"
                " create a new ceremony",
            )
        if self.state not in _COLLECTING:
            why = {
                CeremonyState.APPROVED: "its threshold is already reached; execute it",
                CeremonyState.EXECUTED: "it has been executed",
                CeremonyState.CANCELLED: "it has been cancelled",
            }.get(self.state, self.state.value)
            raise ApprovalRejectedError(
                "not-open", f"ceremony {self.ceremony_id} takes no more approvals: {why}"
            )
        previous = self.decision_of(approval.approver)
        if previous is not None:
            verb = "approved" if previous.decision is Decision.APPROVE else "rejected"
            raise ApprovalRejectedError(
                "already-approved",
                f"{approval.approver} has already {verb} ceremony {self.ceremony_id}"
                f" ({previous.approval_id}): a different approver must approve",
            )
        approvals = (*self.approvals, approval)
        count = sum(1 for a in approvals if a.decision is Decision.APPROVE)
        state: CeremonyState = self.state
        reached = False
        if approval.decision is Decision.APPROVE:
            if state is CeremonyState.PENDING:
                state = transition(state, CeremonyState.PARTIALLY_APPROVED)
            if count >= self.threshold:
                state = transition(state, CeremonyState.APPROVED)
                reached = True
        return attrs.evolve(self, approvals=approvals, state=state), reached

    def expired(self, now: datetime) -> Ceremony:
        if not self.is_overdue(now):
            raise CeremonyStateError(
                f"ceremony {self.ceremony_id} is not past its expiry"
                f" ({format_time(self.expires_at)})"
            )
        return attrs.evolve(self, state=transition(self.state, CeremonyState.EXPIRED))

    def cancelled(self, reason: str, now: datetime) -> Ceremony:
        reason = _check_reason(reason, "a cancellation")
        self._require_not_overdue(now)
        if self.state is CeremonyState.EXPIRED:
            raise CeremonyExpiredError(
                f"ceremony {self.ceremony_id} expired at {format_time(self.expires_at)}:"
                " there is nothing left to cancel"
            )
        if self.state.terminal:
            raise CeremonyStateError(
                f"ceremony {self.ceremony_id} is {self.state.value}: only a ceremony that has"
                " not been executed, expired or cancelled can be cancelled"
            )
        return attrs.evolve(
            self,
            state=transition(self.state, CeremonyState.CANCELLED),
            cancelled_at=now,
            cancel_reason=reason,
        )

    def require_executable(self, now: datetime) -> None:
        """Raise unless the ceremony can be executed now (Approved and within its window)."""
        self._require_not_overdue(now)
        if self.state is CeremonyState.APPROVED:
            return
        if self.state in _COLLECTING:
            raise CeremonyStateError(
                f"cannot execute ceremony {self.ceremony_id}: threshold not met"
                f" ({self.current_approvals} of {self.threshold} approvals): collect more"
                " approvals"
            )
        if self.state is CeremonyState.EXPIRED:
            raise CeremonyExpiredError(
                f"ceremony {self.ceremony_id} expired at {format_time(self.expires_at)}"
                " (timeout reached): create a new ceremony"
            )
        when = f" at {format_time(self.executed_at)}" if self.executed_at else ""
        refused = f"cannot execute ceremony {self.ceremony_id}: it is {self.state.value}{when}"
        if self.state is CeremonyState.EXECUTED:
            raise CeremonyExecutedError(refused)
        raise CeremonyStateError(refused)

    def executed(self, result: Mapping[str, Any], now: datetime) -> Ceremony:
        self.require_executable(now)
        return attrs.evolve(
            self,
            state=transition(self.state, CeremonyState.EXECUTED),
            executed_at=now,
            result_json=_payload_json(result),
        )

    def with_notification(self, marker: str) -> Ceremony:
        return attrs.evolve(self, notifications_sent=(*self.notifications_sent, marker))


def ceremony_digest(
    ceremony_type: str,
    subject: str,
    payload: Mapping[str, Any],
    threshold: int,
    required_approvers: int,
    expires_at: datetime,
) -> str:
    body = {
        "type": ceremony_type,
        "subject": subject,
        "payload": dict(payload),
        "threshold": threshold,
        "requiredApprovers": required_approvers,
        "expiresAt": format_time(expires_at),
    }
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def _check_reason(reason: str, what: str) -> str:
    text = reason.strip() if isinstance(reason, str) else ""
    if not text:
        raise PolicyError(f"{what} needs a reason")
    if len(text) > MAX_REASON:
        raise PolicyError(f"a reason is at most {MAX_REASON} characters")
    return text


check_reason = _check_reason


def states_of(names: Iterable[str]) -> tuple[CeremonyState, ...]:
    """Parse a ``--state pending,partially-approved`` list."""
    return tuple(dict.fromkeys(CeremonyState.parse(n) for n in names))

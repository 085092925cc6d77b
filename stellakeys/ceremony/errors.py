"""Ceremony errors. Each derives from the library's typed errors, so callers that only know
:class:`~stellakeys.errors.StellaKeysError` (the CLI) still turn them into one clear line.

The messages follow the runbook's troubleshooting table: they say what happened and what to do
("re-sign with the correct key", "a different approver must approve", "collect more approvals",
"create a new ceremony").
"""

from __future__ import annotations

from stellakeys.errors import ConflictError, PolicyError

__all__ = [
    "ApprovalRejectedError",
    "CeremonyExecutedError",
    "CeremonyExpiredError",
    "CeremonyStateError",
    "InvalidTransitionError",
    "UnauthorizedError",
]


class InvalidTransitionError(ConflictError):
    """A state change the runbook's state machine does not have."""


class CeremonyStateError(ConflictError):
    """The ceremony is in the wrong state for the request (threshold not met, already
    executed, cancelled, ...)."""


class CeremonyExecutedError(CeremonyStateError):
    """The ceremony was executed already, by this caller or another (another thread, process
    or host that won a concurrent execution): its operation ran exactly once, and not now."""


class CeremonyExpiredError(CeremonyStateError):
    """The ceremony's timeout was reached; it can only be replaced by a new one."""


class UnauthorizedError(PolicyError):
    """The actor lacks the scope or the group membership the request needs."""


class ApprovalRejectedError(PolicyError):
    """An approval (or a signed rejection) that was refused. It has been audited as
    ``signer.ceremony.approval_rejected`` with :attr:`code` and the message as its reason."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.reason = message
        super().__init__(f"approval rejected ({code}): {message}")

"""Dual-control ceremonies: M-of-N signed approvals that gate the dangerous operations.

>>> from stellakeys.ceremony import CeremonyService, Actor
>>> service = CeremonyService.from_settings(manager, manager.settings)   # doctest: +SKIP
>>> c = service.create(Actor("admin@company.com"), "key-rotation", "Root key Q1",
...                    {"keyId": "root-2026-q1"})                          # doctest: +SKIP

The model (states, transitions, approvals) and the rules that decide approvals
(:mod:`stellakeys.ceremony.rules`) are pure. :class:`CeremonyService` persists ceremonies
through the storage ports and executes them through the facade's protected operations, each
given an explicit :class:`Authorization`, which the :class:`CeremonyAuthorizer` the facade was
built with checks inside the operation's own transaction (decision 0020). This package never
imports the facade. The service is imported lazily: the storage ports import this package's
model, and the service imports the storage ports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stellakeys.ceremony.actor import SCOPE_APPROVE, SCOPE_CANCEL, Actor
from stellakeys.ceremony.errors import (
    ApprovalRejectedError,
    CeremonyExecutedError,
    CeremonyExpiredError,
    CeremonyStateError,
    InvalidTransitionError,
    UnauthorizedError,
)
from stellakeys.ceremony.model import (
    CEREMONY_TYPES,
    Approval,
    Ceremony,
    CeremonyState,
    Decision,
)

if TYPE_CHECKING:
    from stellakeys.ceremony.approvers import ApproverFile, ApproverRegistry
    from stellakeys.ceremony.authorization import CeremonyAuthorizer, ExecutionRefusedError
    from stellakeys.ceremony.config import CeremonyConfig
    from stellakeys.ceremony.policy import CeremonyPolicy
    from stellakeys.ceremony.ports import Authorization, ProtectedOperations
    from stellakeys.ceremony.rules import Refusal, RefusalCode, Submission, check_decision
    from stellakeys.ceremony.service import CeremonyService
    from stellakeys.ceremony.statement import ApprovalStatement

__all__ = [
    "CEREMONY_TYPES",
    "SCOPE_APPROVE",
    "SCOPE_CANCEL",
    "Actor",
    "Approval",
    "ApprovalRejectedError",
    "Authorization",
    "ApprovalStatement",
    "ApproverFile",
    "ApproverRegistry",
    "Ceremony",
    "CeremonyAuthorizer",
    "CeremonyConfig",
    "CeremonyExecutedError",
    "CeremonyExpiredError",
    "CeremonyPolicy",
    "CeremonyService",
    "CeremonyState",
    "CeremonyStateError",
    "Decision",
    "ExecutionRefusedError",
    "InvalidTransitionError",
    "ProtectedOperations",
    "Refusal",
    "RefusalCode",
    "Submission",
    "UnauthorizedError",
    "check_decision",
]

_LAZY = {
    "ApproverFile": "stellakeys.ceremony.approvers",
    "ApproverRegistry": "stellakeys.ceremony.approvers",
    "CeremonyPolicy": "stellakeys.ceremony.policy",
    "CeremonyConfig": "stellakeys.ceremony.config",
    "CeremonyService": "stellakeys.ceremony.service",
    "ApprovalStatement": "stellakeys.ceremony.statement",
    "Authorization": "stellakeys.ceremony.ports",
    "CeremonyAuthorizer": "stellakeys.ceremony.authorization",
    "ExecutionRefusedError": "stellakeys.ceremony.authorization",
    "ProtectedOperations": "stellakeys.ceremony.ports",
    "Refusal": "stellakeys.ceremony.rules",
    "RefusalCode": "stellakeys.ceremony.rules",
    "Submission": "stellakeys.ceremony.rules",
    "check_decision": "stellakeys.ceremony.rules",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

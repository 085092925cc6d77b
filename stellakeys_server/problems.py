"""RFC 9457 problem details: one stable ``type`` per kind of failure, never a traceback, never
key material (library errors are written to hold none)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from stellakeys.ceremony.errors import (
    ApprovalRejectedError,
    CeremonyExecutedError,
    UnauthorizedError,
)
from stellakeys.errors import (
    ConflictError,
    DuplicateMemberError,
    NotFoundError,
    PolicyError,
    StellaKeysError,
)

__all__ = ["Problem", "from_library", "response"]

TYPE_BASE = "https://stellakeys.dev/problems/"


class Problem(Exception):
    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.extra = extra


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
}


def response(problem: Problem) -> JSONResponse:
    body = {
        "type": TYPE_BASE + problem.kind,
        "title": _TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="stellaops"'} if problem.status == 401 else None
    return JSONResponse(
        body, status_code=problem.status, media_type="application/problem+json", headers=headers
    )


def from_library(exc: StellaKeysError) -> Problem:
    """The problem for a library error (most specific class first)."""
    if isinstance(exc, ApprovalRejectedError):
        return Problem(403, "approval-rejected", str(exc), code=exc.code)
    if isinstance(exc, UnauthorizedError):
        return Problem(403, "forbidden", str(exc))
    if isinstance(exc, NotFoundError):
        return Problem(404, "not-found", str(exc))
    if isinstance(exc, CeremonyExecutedError):
        # Also what the loser of a concurrent execution gets: the operation ran once, not now.
        return Problem(409, "ceremony-executed", str(exc))
    if isinstance(exc, DuplicateMemberError):
        return Problem(422, "duplicate-member", str(exc))
    if isinstance(exc, ConflictError):
        return Problem(409, "conflict", str(exc))
    if isinstance(exc, PolicyError):
        # e.g. a protected operation asked for directly while the store requires a ceremony.
        return Problem(403, "policy-refused", str(exc))
    if isinstance(exc, ValueError):
        return Problem(422, "invalid-input", str(exc))
    return Problem(400, "refused", str(exc))

"""Revocation reasons: a closed vocabulary, ordered by strength.

The reason decides how a revoked key is judged: a key revoked for ``compromise`` may have been
used by a thief, who can back-date anything, so it verifies only with trusted time before the
revocation; every other reason keeps proofs signed before the revocation valid. A free-text
reason made that rule depend on spelling (``compromised``, ``Key-Compromise``), so reasons are
parsed here into :class:`RevocationReason`, with the key rotation runbook's words as canonical
values and RFC 5280's CRLReason names as aliases. Matching ignores ASCII case, spaces,
``-`` and ``_`` (``keyCompromise`` = ``key-compromise`` = ``KEY_COMPROMISE``).

A revocation only ever gets stricter: :func:`merge_revocation` keeps the earliest time and the
strongest reason (docs/decisions/0013-revocation-evidence.md). The storage schema enforces the
same rule with triggers, ranking reasons by :attr:`RevocationReason.strength`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from datetime import datetime

from stellakeys.errors import UnknownRevocationReasonError

__all__ = [
    "RevocationReason",
    "accepted_reasons",
    "is_compromise",
    "legacy_reason",
    "merge_revocation",
    "parse_reason",
]


class RevocationReason(enum.Enum):
    """Why a key was revoked. The value is what is stored and shown."""

    UNSPECIFIED = "unspecified"
    SUPERSEDED = "superseded"
    ROTATION = "rotation"
    ANNUAL_ROTATION = "annual-rotation"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    AFFILIATION_CHANGED = "affiliation-changed"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"
    COMPROMISE = "compromise"

    @property
    def strength(self) -> int:
        """Higher is stricter. Equal strengths are different words for an orderly retirement;
        a later revocation replaces the stored reason only with a strictly stronger one."""
        return _STRENGTH[self]

    @property
    def crl_reason(self) -> str:
        """The RFC 5280 CRLReason name (the runbook's rotation words are ``superseded``)."""
        return _CRL_NAME[self]

    @property
    def is_compromise(self) -> bool:
        return self is RevocationReason.COMPROMISE

    @classmethod
    def parse(cls, text: str | RevocationReason) -> RevocationReason:
        return parse_reason(text)


_STRENGTH: dict[RevocationReason, int] = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.SUPERSEDED: 1,
    RevocationReason.ROTATION: 1,
    RevocationReason.ANNUAL_ROTATION: 1,
    RevocationReason.CESSATION_OF_OPERATION: 1,
    RevocationReason.AFFILIATION_CHANGED: 2,
    RevocationReason.PRIVILEGE_WITHDRAWN: 3,
    RevocationReason.COMPROMISE: 4,
}

_CRL_NAME: dict[RevocationReason, str] = {
    RevocationReason.UNSPECIFIED: "unspecified",
    RevocationReason.SUPERSEDED: "superseded",
    RevocationReason.ROTATION: "superseded",
    RevocationReason.ANNUAL_ROTATION: "superseded",
    RevocationReason.CESSATION_OF_OPERATION: "cessationOfOperation",
    RevocationReason.AFFILIATION_CHANGED: "affiliationChanged",
    RevocationReason.PRIVILEGE_WITHDRAWN: "privilegeWithdrawn",
    RevocationReason.COMPROMISE: "keyCompromise",
}

# Keys are spellings folded by _fold (lower case, letters and digits only). cACompromise and
# aACompromise are compromise too: in stellakeys every key is its own authority, and the
# stricter reading is the safe one. certificateHold and removeFromCRL are deliberately absent:
# a revocation here is never undone.
_ALIASES: dict[str, RevocationReason] = {
    "unspecified": RevocationReason.UNSPECIFIED,
    "superseded": RevocationReason.SUPERSEDED,
    "rotation": RevocationReason.ROTATION,
    "rotated": RevocationReason.ROTATION,
    "keyrotation": RevocationReason.ROTATION,
    "annualrotation": RevocationReason.ANNUAL_ROTATION,
    "cessationofoperation": RevocationReason.CESSATION_OF_OPERATION,
    "affiliationchanged": RevocationReason.AFFILIATION_CHANGED,
    "privilegewithdrawn": RevocationReason.PRIVILEGE_WITHDRAWN,
    "compromise": RevocationReason.COMPROMISE,
    "compromised": RevocationReason.COMPROMISE,
    "keycompromise": RevocationReason.COMPROMISE,
    "keycompromised": RevocationReason.COMPROMISE,
    "cacompromise": RevocationReason.COMPROMISE,
    "aacompromise": RevocationReason.COMPROMISE,
}


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_SEPARATORS = str.maketrans("", "", " -_")


def _lower(text: str) -> str:
    # ASCII only, like SQLite's lower(): the migration's SQL must read a text the same way.
    return text.translate(_ASCII_LOWER)


def _fold(text: str) -> str:
    """Case and the separators space, '-' and '_' ignored (the SQL of migration 0003 does
    ``replace(replace(replace(lower(x), ' ', ''), '-', ''), '_', '')``)."""
    return _lower(text).translate(_SEPARATORS)


def accepted_reasons() -> list[str]:
    """Every canonical reason, weakest first (what an error message lists)."""
    return [r.value for r in sorted(RevocationReason, key=lambda r: r.strength)]


def parse_reason(text: str | RevocationReason) -> RevocationReason:
    """The reason a word names; UnknownRevocationReasonError (listing the accepted words and
    their RFC 5280 aliases) for anything else, including free text."""
    if isinstance(text, RevocationReason):
        return text
    reason = _ALIASES.get(_fold(text)) if isinstance(text, str) else None
    if reason is None:
        raise UnknownRevocationReasonError(str(text), accepted_reasons())
    return reason


def legacy_reason(text: str) -> RevocationReason:
    """How a free-text reason stored before the vocabulary existed is read (migration 0003,
    audit replay, feeds from older versions): a known word as :func:`parse_reason`; any other
    text that mentions compromise is a compromise (treating a stolen key as rotated is the
    dangerous mistake); anything else is ``unspecified``. Must stay equal to the SQL of the
    migration, which a test checks."""
    reason = _ALIASES.get(_fold(text))
    if reason is not None:
        return reason
    if "compromis" in _lower(text):
        return RevocationReason.COMPROMISE
    return RevocationReason.UNSPECIFIED


def is_compromise(reason: str | None) -> bool:
    """Whether a stored reason marks the key as compromised. Never raises: a reason outside
    the vocabulary (an old feed, an unmigrated row) is read as :func:`legacy_reason` does."""
    if reason is None:
        return False
    return legacy_reason(reason) is RevocationReason.COMPROMISE


def merge_revocation(
    current_at: datetime | None,
    current_reason: str | None,
    new_at: datetime,
    new_reason: str | RevocationReason,
) -> tuple[datetime, RevocationReason]:
    """The revocation after a new request: the earliest time and the strongest reason. A
    request can move the time earlier or escalate the reason; it never postpones or weakens.
    Equal strength keeps the current reason."""
    reason = parse_reason(new_reason)
    if current_at is None:
        return new_at, reason
    current = legacy_reason(current_reason) if current_reason is not None else None
    if current is not None and current.strength >= reason.strength:
        reason = current
    return min(current_at, new_at), reason

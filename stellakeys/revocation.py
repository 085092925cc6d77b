"""Revocation reasons.

This branch holds only :func:`is_compromise`, which verification needs; the closed vocabulary
of reasons (with RFC 5280's CRLReason names as aliases) is another change that keeps this
function as it is.
"""

from __future__ import annotations

__all__ = ["is_compromise"]

#: Spellings of "the private key was stolen", compared after lowercasing: the runbook's word,
#: RFC 5280's ``keyCompromise`` (plain and hyphenated) and the adjective operators type.
_COMPROMISE_WORDS = frozenset({"compromise", "key-compromise", "keycompromise", "compromised"})


def is_compromise(reason: str | None) -> bool:
    """Whether a revocation reason says the key was compromised.

    True for ``compromise`` and its aliases ``key-compromise``, ``keyCompromise`` and
    ``compromised``, in any letter case and with surrounding spaces ignored; False for every
    other reason and for no reason at all. A compromise is a fact about the key, not about one
    anchor: verification applies it wherever the key appears (docs/verification.md).
    """
    return reason is not None and reason.strip().lower() in _COMPROMISE_WORDS

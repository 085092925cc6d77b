"""When a signature is judged: the time and its source. Pure.

Split from :mod:`stellakeys.verification` (which re-exports these names) so that the rules of
key validity (:mod:`stellakeys.key_validity`) can use them without a cycle.
"""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

__all__ = ["KeyTime", "SigningTime", "TimeSource"]


class TimeSource(enum.StrEnum):
    TRUSTED = "trusted"
    ASSERTED = "asserted"
    NOW = "now"


@attrs.frozen
class SigningTime:
    at: datetime
    source: TimeSource
    #: Where the time came from, e.g. the TSA's name for trusted time.
    detail: str | None = None


@attrs.frozen
class KeyTime:
    """The time at which one counted key's signature was judged."""

    key_id: str
    time: SigningTime

"""Parsing and formatting of instants and durations at the boundary (CLI, config, JSON)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from stellakeys.errors import MalformedTimeError

__all__ = ["format_time", "parse_duration", "parse_time"]

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 with an explicit zone (``Z`` or an offset), a bare date (midnight UTC), or
    ``NOW`` when ``now`` is given. Naive times are refused: a forensic question asked in the
    wrong zone gives a wrong answer without any error."""
    value = text.strip()
    if value.upper() == "NOW":
        if now is None:
            raise MalformedTimeError("'NOW' is not allowed here")
        return now
    if _DATE_ONLY.match(value):
        value += "T00:00:00+00:00"
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise MalformedTimeError(
            f"invalid time {text!r}: expected ISO 8601 like 2025-02-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise MalformedTimeError(f"time {text!r} has no zone: add 'Z' or an offset")
    return parsed.astimezone(UTC)


def format_time(value: datetime) -> str:
    """``2025-02-01T00:00:00Z`` (microseconds only when present)."""
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``24h``, ``7d``, ``2w``."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise MalformedTimeError(f"invalid duration {text!r}: expected e.g. 24h, 7d, 30m")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])

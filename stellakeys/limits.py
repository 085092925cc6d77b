"""Limits on user-supplied values, and the checks that enforce them.

One module, used both where a request is accepted (a ceremony's payload at ``create``) and
where it is carried out (the facade), so that what is accepted can always be executed and
nothing unbounded reaches the append-only audit log. The limits are documented in
docs/ceremonies.md ("Limits").

Layer 1: depends on the errors only.
"""

from __future__ import annotations

from collections.abc import Sequence

from stellakeys.errors import PolicyError

__all__ = [
    "MAX_KEY_ID",
    "MAX_LIST",
    "MAX_PAYLOAD_BYTES",
    "MAX_POLICY_VERSION",
    "MAX_PREDICATE_TYPE",
    "MAX_PURL_PATTERN",
    "MAX_REASON",
    "RESERVED_KEY_IDS",
    "check_key_id",
    "check_list_size",
    "check_predicate_types",
    "check_text",
    "shown",
]

MAX_KEY_ID = 200
MAX_PURL_PATTERN = 1000
MAX_PREDICATE_TYPE = 500
MAX_POLICY_VERSION = 100
MAX_REASON = 2000
#: Items in one list field (keyIds, anchorIds, predicateTypes).
MAX_LIST = 100
#: The canonical JSON of a whole ceremony payload.
MAX_PAYLOAD_BYTES = 64 * 1024
#: ``ALL`` means "every anchor" wherever an anchor id is expected.
RESERVED_KEY_IDS = frozenset({"ALL"})


def shown(value: object, limit: int = 60) -> str:
    """A bounded repr for error messages: an attacker's 5 MB value must not become a 5 MB
    error (or log line)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes | list | tuple) else None
    more = f", {size} characters" if isinstance(value, str) else ""
    return f"{text[:limit]}...{more}" if size is not None else f"{text[:limit]}..."


def check_text(value: object, what: str, maximum: int, *, allow_blank: bool = False) -> str:
    """A printable string of at most ``maximum`` characters, not padded with spaces."""
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a string")
    if len(value) > maximum:
        raise PolicyError(f"{what} is {len(value)} characters long; the limit is {maximum}")
    if not allow_blank and not value.strip():
        raise PolicyError(f"{what} must not be empty")
    if not value.isprintable():
        raise PolicyError(f"{what} {shown(value)} contains control characters")
    return value


def check_key_id(key_id: object) -> str:
    """A key id: 1 to MAX_KEY_ID printable characters, no surrounding spaces, not ``ALL``."""
    try:
        text = check_text(key_id, "key id", MAX_KEY_ID)
    except PolicyError as exc:
        raise PolicyError(f"invalid key id: {exc}") from None
    if text != text.strip():
        raise PolicyError(f"invalid key id {shown(text)}: no leading or trailing spaces")
    if text in RESERVED_KEY_IDS:
        raise PolicyError(f"invalid key id {text!r}: it is reserved (it means every anchor)")
    return text


def check_list_size(values: Sequence[object], what: str, maximum: int = MAX_LIST) -> None:
    if len(values) > maximum:
        raise PolicyError(f"{what} has {len(values)} items; the limit is {maximum}")


def check_predicate_types(values: Sequence[object]) -> list[str]:
    """Predicate types: at most MAX_LIST, each 1 to MAX_PREDICATE_TYPE printable characters.
    (Their form is not checked further: an anchor only compares them with what statements
    say, and stores what it was given.)"""
    check_list_size(values, "predicateTypes")
    return [check_text(value, "a predicate type", MAX_PREDICATE_TYPE) for value in values]

"""Strict JSON for everything stellakeys reads from outside: one ``loads`` with three rules.

1. **No duplicate member names.** RFC 8259 only says names "SHOULD be unique"; Python's ``json``
   silently keeps the last copy, Go's keeps the last, some JavaScript and Rust parsers the first
   or refuse. An envelope with ``payload`` twice (or a statement with ``subject`` twice) would
   then be one proof to us and another to a peer verifier: a parser differential. The stdlib
   module has no option to refuse duplicates, hence this hand-written ``object_pairs_hook``.
2. **UTF-8 only** for bytes (RFC 8259 section 8.1). ``json.loads(bytes)`` would also guess
   UTF-16 and UTF-32; a byte-order mark is refused too.
3. **No lone surrogates.** ``"\\ud800"`` parses to a Python string that cannot be encoded as
   UTF-8, so it could not be hashed, signed (DSSE's PAE encodes payloadType as UTF-8) or
   written back, and other parsers replace it or refuse it. Paired surrogates (an escaped
   emoji) are fine.

The parse itself is ``jiter``'s (the Rust JSON parser behind pydantic), which refuses duplicate
names, invalid UTF-8 and lone surrogates on its own and is 4-8x faster than ``json`` (a 64 KiB
statement: 7 us against 57 us). It is only an accelerator: anything it refuses, and any ``str``
that is not UTF-8-encodable, goes through the stdlib reference path below, which decides and
words the error. So the answer is the reference path's for every input, as long as whatever
jiter accepts the reference accepts with an equal value; tests/test_strict_json.py checks
that differentially (hypothesis over JSON texts, mutations and raw bytes).

Callers pass the error class to raise for a duplicate (a :class:`DuplicateMemberError`
subclass that is also their own error type), and a name for the document used in messages.
Other problems are ``ValueError`` (as from ``json.loads``), which callers already turn into
their own "not valid JSON" error.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jiter

from stellakeys.errors import DuplicateMemberError

__all__ = ["loads"]

#: Any escaped UTF-16 surrogate. A hit sends the document through the (slower) full check;
#: an escaped backslash before "ud800" is a false positive that the full check clears.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_SURROGATE_ESCAPE_STR = re.compile(r"\\u[dD][89abcdefABCDEF]")


class _Duplicate(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Duplicate(name)
            seen.add(name)
    return obj


# One decoder for every call: json.loads with a hook builds a new JSONDecoder (and its
# scanner) per call, a measurable share of verifying a small envelope.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique)


def loads(
    data: str | bytes,
    *,
    document: str = "JSON document",
    error: type[DuplicateMemberError] = DuplicateMemberError,
) -> Any:
    """``json.loads`` that refuses duplicate members, non-UTF-8 bytes and lone surrogates."""
    raw: bytes | None
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, bytearray | memoryview):
        raw = bytes(data)
    else:
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:  # raw surrogates: the reference path says so
            raw = None
    if raw is not None:
        try:
            # NaN/Infinity (which json accepts) and every other refusal go to the reference.
            return jiter.from_json(
                raw, allow_inf_nan=False, cache_mode="keys", catch_duplicate_keys=True
            )
        except ValueError:
            pass
    return reference_loads(data, document=document, error=error)


def reference_loads(
    data: str | bytes,
    *,
    document: str = "JSON document",
    error: type[DuplicateMemberError] = DuplicateMemberError,
) -> Any:
    """The stdlib implementation of :func:`loads`: the semantics, and every error's words."""
    if isinstance(data, bytes | bytearray | memoryview):
        # Strict UTF-8 (a UnicodeDecodeError is a ValueError): no guessing of UTF-16/32.
        raw = bytes(data)
        text = raw.decode("utf-8")
        # An escape needs a backslash: a one-byte memchr clears most documents (a base64
        # payload has none) before the regex, which costs ~0.5 us per KiB.
        suspicious = b"\\" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    else:
        text = data
        # A str may already hold raw surrogates (e.g. read with errors="surrogateescape").
        suspicious = (
            "\\" in text and _SURROGATE_ESCAPE_STR.search(text) is not None
        ) or not _encodable(text)
    if text.startswith("\ufeff"):  # as json.loads does for a str
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        value = _DECODER.decode(text)
    except _Duplicate as dup:
        raise error(dup.name, document) from None
    if suspicious:
        _refuse_lone_surrogates(value)
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                raise ValueError("a string holds a lone UTF-16 surrogate (not UTF-8 text)")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)

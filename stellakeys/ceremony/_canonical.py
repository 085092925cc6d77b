"""Canonical JSON for what approvers sign: RFC 8785 (JCS) on a float-free subset of JSON.

Two parties that compute a ceremony digest (the service that stores the ceremony and the
approver's tool that signs it, possibly another implementation) must produce the same bytes.
JCS gives that, but its number rule (ECMAScript double formatting) is where implementations
disagree in practice, so ceremony payloads do not admit floats at all: integers within the
exactly representable range (|n| <= 2**53 - 1), strings, booleans, null, arrays and objects.
On that subset, JCS is: UTF-8, no whitespace, object members sorted by the UTF-16 code units
of their names, and strings escaped minimally (which is what ``json.dumps`` with
``ensure_ascii=False`` does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from stellakeys.errors import PolicyError

__all__ = ["MAX_SAFE_INTEGER", "canonical_json", "check_canonical_value"]

MAX_SAFE_INTEGER = 2**53 - 1
_MAX_DEPTH = 32


def check_canonical_value(value: object, where: str = "payload", depth: int = 0) -> None:
    """Raise PolicyError unless ``value`` is in the float-free JSON subset."""
    if depth > _MAX_DEPTH:
        raise PolicyError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise PolicyError(f"{where}: integer {value} is outside +-(2**53 - 1)")
        return
    if isinstance(value, float):
        raise PolicyError(
            f"{where}: numbers with a fraction or exponent are not allowed (use a string):"
            " their canonical form differs between JSON implementations"
        )
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_canonical_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                raise PolicyError(f"{where}: object keys must be strings")
            check_canonical_value(item, f"{where}.{k}", depth + 1)
        return
    raise PolicyError(f"{where}: {type(value).__name__} is not a JSON value")


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, Mapping):
        out.append("{")
        # RFC 8785 3.2.3: sort by UTF-16 code units, which differs from code point order only
        # for characters outside the Basic Multilingual Plane.
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        out.append(json.dumps(value, ensure_ascii=False))


def canonical_json(value: object) -> bytes:
    """The JCS bytes of ``value`` (which must pass :func:`check_canonical_value`)."""
    check_canonical_value(value, "value")
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")

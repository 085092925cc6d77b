"""in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from stellakeys import strict_json
from stellakeys.errors import (
    DuplicateEnvelopeMemberError,
    DuplicateMemberError,
    MalformedEnvelopeError,
)

__all__ = ["PAYLOAD_TYPE", "STATEMENT_TYPE", "Statement", "Subject", "statement_facts"]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def _frozen_digest(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(sorted(value.items())))


def _frozen_predicate(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # Read-only at the top level; statements are values, and a predicate edited after signing
    # would no longer be what was signed.
    return MappingProxyType(dict(value))


@attrs.frozen
class Subject:
    """A software artifact: ``name`` (often a PURL) and its digests (algorithm -> hex)."""

    name: str
    digest: Mapping[str, str] = attrs.field(converter=_frozen_digest, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": dict(self.digest)}


@attrs.frozen
class Statement:
    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_predicate, hash=False
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [s.to_dict() for s in self.subjects],
            "predicateType": self.predicate_type,
            "predicate": dict(self.predicate),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Statement:
        subjects, predicate_type, predicate = _checked(data)
        parsed = tuple(Subject(s.get("name", ""), s["digest"]) for s in subjects)
        return cls(parsed, predicate_type, predicate)


def statement_facts(data: bytes | str) -> tuple[str, tuple[str, ...]]:
    """``(predicateType, subject names)`` of a statement, checked exactly as
    :meth:`Statement.from_json` checks it but without building the objects: verification
    needs only these two facts, on its hot path."""
    subjects, predicate_type, _ = _checked(data)
    return predicate_type, tuple(s.get("name", "") for s in subjects)


def _checked(data: bytes | str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The subjects, predicateType and predicate of a well-formed statement, else raise."""
    try:
        obj = strict_json.loads(
            data, document="in-toto statement", error=DuplicateEnvelopeMemberError
        )
    except DuplicateMemberError:
        raise
    except RecursionError:
        raise MalformedEnvelopeError("statement JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEnvelopeError(f"statement is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.get("_type") != STATEMENT_TYPE:
        raise MalformedEnvelopeError(f"payload is not an in-toto {STATEMENT_TYPE}")
    subjects = obj.get("subject")
    predicate_type = obj.get("predicateType")
    predicate = obj.get("predicate", {})
    if not isinstance(subjects, list) or not subjects:
        raise MalformedEnvelopeError("statement.subject must be a non-empty list")
    if not isinstance(predicate_type, str) or not predicate_type:
        raise MalformedEnvelopeError("statement.predicateType must be a non-empty string")
    if not isinstance(predicate, dict):
        raise MalformedEnvelopeError("statement.predicate must be an object")
    for s in subjects:
        if not isinstance(s, dict) or not isinstance(s.get("name", ""), str):
            raise MalformedEnvelopeError("each subject needs a string name")
        digest = s.get("digest")
        if not isinstance(digest, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in digest.items()
        ):
            raise MalformedEnvelopeError("each subject needs a digest object of strings")
    return subjects, predicate_type, predicate

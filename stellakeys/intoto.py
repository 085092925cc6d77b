"""in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from stellakeys.errors import MalformedEnvelopeError

__all__ = ["PAYLOAD_TYPE", "STATEMENT_TYPE", "Statement", "Subject"]

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
        try:
            obj = json.loads(data)
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
        parsed: list[Subject] = []
        for s in subjects:
            if not isinstance(s, dict) or not isinstance(s.get("name", ""), str):
                raise MalformedEnvelopeError("each subject needs a string name")
            digest = s.get("digest")
            if not isinstance(digest, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in digest.items()
            ):
                raise MalformedEnvelopeError("each subject needs a digest object of strings")
            parsed.append(Subject(s.get("name", ""), digest))
        return cls(tuple(parsed), predicate_type, predicate)

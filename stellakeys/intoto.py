"""in-toto Statements v1 and v0.1 (https://github.com/in-toto/attestation/tree/main/spec).

Parsing is strict where verification depends on it (decision 0012): ``_type`` must be one of
the two Statement URIs; ``subject`` a non-empty list of objects, each with a non-empty
``digest`` of strings (lowercase hex for the spec's named hash algorithms) and, in v0.1, a
``name``; ``name`` is a string when present; ``predicateType`` a non-empty string; and
``predicate`` an object when present (omitted means empty, and an empty predicate is written
by omitting it). Unrecognised fields are ignored, as the spec's parsing
rules require. ``predicateType`` is not held to URI syntax: the runbook's own types
(``evidence.stella/v1``) are not URIs, and anchors list the exact types they accept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

import stellakeys.strict_json as strict_json
from stellakeys.errors import (
    DuplicateEnvelopeMemberError,
    DuplicateMemberError,
    MalformedEnvelopeError,
)

__all__ = [
    "PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "STATEMENT_TYPES",
    "STATEMENT_TYPE_V01",
    "Statement",
    "Subject",
    "is_intoto_payload_type",
    "looks_like_statement",
    "statement_facts",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
STATEMENT_TYPE_V01 = "https://in-toto.io/Statement/v0.1"
#: The Statement ``_type`` URIs a verifier accepts.
STATEMENT_TYPES = (STATEMENT_TYPE, STATEMENT_TYPE_V01)
#: Every Statement version's ``_type`` starts so; a payload of another type that claims one is
#: a statement in disguise, not "a payload that names no artifact".
_STATEMENT_PREFIX = "https://in-toto.io/Statement/"

#: The in-toto DigestSet's named algorithms, whose values are lowercase hex (digest_set.md).
_HEX_ALGORITHMS = frozenset(
    {
        *("sha256", "sha224", "sha384", "sha512", "sha512_224", "sha512_256"),
        *("sha3_224", "sha3_256", "sha3_384", "sha3_512", "shake128", "shake256"),
        *("blake2b", "blake2s", "ripemd160", "sm3", "gost", "sha1", "md5", "dirHash1"),
        *("gitCommit", "gitTree", "gitBlob", "gitTag"),
    }
)
_LOWER_HEX = re.compile(r"[0-9a-f]+")


def is_intoto_payload_type(payload_type: str) -> bool:
    """Whether a DSSE payloadType is in-toto's. Media types compare case-insensitively and
    without parameters (RFC 6838), so ``application/vnd.in-toto+JSON; charset=utf-8`` is one:
    a signer must not dodge statement parsing by respelling the type."""
    return payload_type.split(";", 1)[0].strip().lower() == PAYLOAD_TYPE


def looks_like_statement(payload: bytes) -> bool:
    """Whether a payload is a JSON object whose ``_type`` names an in-toto Statement (any
    version): verification refuses such a payload under another payloadType."""
    # No byte-level shortcut: JSON may spell the URI with escapes ("https:\\/\\/...",
    # "\\u0068ttps") or in UTF-16, and a parser elsewhere would still see a statement.
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    kind = obj.get("_type") if isinstance(obj, dict) else None
    return isinstance(kind, str) and kind.startswith(_STATEMENT_PREFIX)


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
    #: The ``_type`` URI (v1 unless parsed from a v0.1 statement).
    statement_type: str = STATEMENT_TYPE

    def to_dict(self) -> dict[str, Any]:
        """The statement as the spec writes it. ``predicate`` is optional in Statement v1
        ("unset is treated the same as set-but-empty"), so an empty one is left out; parsing
        accepts both forms (docs/decisions/0022)."""
        out: dict[str, Any] = {
            "_type": self.statement_type,
            "subject": [s.to_dict() for s in self.subjects],
            "predicateType": self.predicate_type,
        }
        if self.predicate:
            out["predicate"] = dict(self.predicate)
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Statement:
        kind, subjects, predicate_type, predicate = _checked(data)
        parsed = tuple(Subject(s.get("name", ""), s["digest"]) for s in subjects)
        return cls(parsed, predicate_type, predicate, kind)


def statement_facts(data: bytes | str) -> tuple[str, tuple[str, ...]]:
    """``(predicateType, subject names)`` of a statement, checked exactly as
    :meth:`Statement.from_json` checks it but without building the objects: verification
    needs only these two facts, on its hot path. A subject without a name has name ``""``."""
    _, subjects, predicate_type, _ = _checked(data)
    return predicate_type, tuple(s.get("name", "") for s in subjects)


def _checked(data: bytes | str) -> tuple[str, list[dict[str, Any]], str, dict[str, Any]]:
    """The _type, subjects, predicateType and predicate of a well-formed statement, else
    raise MalformedEnvelopeError saying which rule it breaks."""
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
    if not isinstance(obj, dict):
        raise MalformedEnvelopeError("statement must be a JSON object")
    kind = obj.get("_type")
    if kind not in STATEMENT_TYPES:
        raise MalformedEnvelopeError(
            f"statement _type is {repr(kind)[:100]}; accepted: {', '.join(STATEMENT_TYPES)}"
        )
    subjects = obj.get("subject")
    predicate_type = obj.get("predicateType")
    # v1: "Unset is treated the same as set-but-empty"; null is not an object, so it is refused.
    predicate = obj.get("predicate", {})
    if not isinstance(subjects, list) or not subjects:
        raise MalformedEnvelopeError("statement.subject must be a non-empty list")
    if not isinstance(predicate_type, str) or not predicate_type.strip():
        raise MalformedEnvelopeError("statement.predicateType must be a non-empty string")
    if not isinstance(predicate, dict):
        raise MalformedEnvelopeError("statement.predicate must be an object")
    for i, s in enumerate(subjects):
        _check_subject(s, i, name_required=kind == STATEMENT_TYPE_V01)
    return kind, subjects, predicate_type, predicate


def _check_subject(subject: Any, i: int, *, name_required: bool) -> None:
    where = f"statement.subject[{i}]"
    if not isinstance(subject, dict):
        raise MalformedEnvelopeError(f"{where} must be an object")
    # v1: name is optional (a string when present); v0.1: required.
    if ("name" in subject or name_required) and not isinstance(subject.get("name"), str):
        raise MalformedEnvelopeError(f"{where}.name must be a string")
    digest = subject.get("digest")
    # v1 and v0.1 alike: every subject MUST have a digest (a DigestSet: one or more entries).
    if not isinstance(digest, dict) or not digest:
        raise MalformedEnvelopeError(f"{where}.digest must be a non-empty object")
    for algorithm, value in digest.items():
        if not isinstance(value, str) or not value:
            raise MalformedEnvelopeError(f"{where}.digest.{algorithm} must be a non-empty string")
        if algorithm in _HEX_ALGORITHMS and not _LOWER_HEX.fullmatch(value):
            raise MalformedEnvelopeError(f"{where}.digest.{algorithm} must be lowercase hex")

"""Which artifacts a proof speaks for, and how a statement's subjects are judged. Pure.

The verifier's promise is "validly signed, *for this artifact*, by a key the applicable anchor
trusted at T". This module decides the "for this artifact" part (decision 0012,
docs/verification.md):

* A payload whose payloadType is in-toto's (compared as a media type: case-insensitive,
  parameters ignored) must parse as a Statement v1 or v0.1, or verification fails with the
  parse error. A payload that *is* a statement under another payloadType fails too. Every
  other payload names no artifact: only those may get a key-only check, and the result says so.
* With an artifact requested (``--purl``), it must equal one of the statement's subjects after
  package-URL normalisation. Version, qualifiers and subpath take part: a subject without a
  version covers only a request without one, and a versioned subject only that version.
* With none requested, every distinct subject is judged on its own, against the anchor that
  applies to it; the proof verifies only if every one is covered. A subject whose name is not
  a package URL can be covered only by the universal anchor (pattern ``*``): no other anchor
  names it, and a key trusted for a few packages must not vouch for arbitrary names.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from stellakeys.dsse import Envelope, VerifiedKey
from stellakeys.errors import MalformedEnvelopeError, MalformedPurlError
from stellakeys.intoto import (
    PAYLOAD_TYPE,
    is_intoto_payload_type,
    looks_like_statement,
    statement_facts,
)
from stellakeys.purl import Purl, parse_purl
from stellakeys.reasons import Reason, ReasonCode
from stellakeys.verification import KeyTime, SubjectResult, VerificationResult

__all__ = [
    "PayloadFacts",
    "SubjectTarget",
    "combine_subjects",
    "payload_facts",
    "requested_subject_reason",
    "subject_result",
    "subject_targets",
]

#: Subject names are the signer's text; reasons quote at most this much of one.
_QUOTE = 120


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


@attrs.frozen
class PayloadFacts:
    """What the payload says about artifacts."""

    #: True for an in-toto statement (parsed or not): such a payload never gets a key-only check.
    names_artifact: bool
    predicate_type: str | None = None
    #: Subject names in statement order (``""`` for a subject without a name).
    subjects: tuple[str, ...] = ()
    #: Why the payload cannot be judged at all (a statement that does not parse, or one under
    #: another payloadType); verification fails with it as the reason.
    error: Reason | None = None


# Listing an anchor's proofs reads each statement's subjects and then verifies that very
# Envelope, which would read them again (~5 us a proof). Envelopes are immutable and the facts
# a pure function of one, so the last answer is kept for that object: by identity, not
# equality (no hashing of the payload; the reference held here keeps the object, hence its
# id, from being reused). One tuple, replaced whole, so threads see a consistent pair.
_last: tuple[Envelope, PayloadFacts] | None = None


def payload_facts(envelope: Envelope) -> PayloadFacts:
    global _last
    last = _last
    if last is not None and last[0] is envelope:
        return last[1]
    facts = _payload_facts(envelope)
    _last = (envelope, facts)
    return facts


def _payload_facts(envelope: Envelope) -> PayloadFacts:
    payload_type = envelope.payload_type
    if is_intoto_payload_type(payload_type):
        try:
            predicate_type, names = statement_facts(envelope.payload)
        except MalformedEnvelopeError as exc:
            return PayloadFacts(
                True,
                error=Reason(
                    ReasonCode.MALFORMED_STATEMENT,
                    f"payloadType {payload_type!r} says in-toto, but the payload is not a"
                    f" valid in-toto statement: {exc}",
                ),
            )
        return PayloadFacts(True, predicate_type, names)
    if looks_like_statement(envelope.payload):
        return PayloadFacts(
            True,
            error=Reason(
                ReasonCode.MALFORMED_STATEMENT,
                f"the payload is an in-toto statement but its payloadType is"
                f" {payload_type!r}, not {PAYLOAD_TYPE}: sign statements as {PAYLOAD_TYPE}",
            ),
        )
    return PayloadFacts(False)


@attrs.frozen
class SubjectTarget:
    """One distinct subject to judge."""

    name: str
    #: The subject as a normalised package URL; None when its name is not one.
    purl: Purl | None
    #: Why the name is not a package URL (None for PURL subjects).
    problem: str | None = None

    @property
    def label(self) -> str:
        return self.purl.canonical if self.purl is not None else _quote(self.name)


def _as_purl(name: str) -> tuple[Purl | None, str | None]:
    if not name.startswith("pkg:"):
        return None, "not a package URL"
    try:
        return parse_purl(name), None
    except MalformedPurlError as exc:
        return None, str(exc)


def subject_targets(names: Sequence[str]) -> tuple[SubjectTarget, ...]:
    """The distinct subjects of a statement (two spellings of one PURL are one subject)."""
    seen: dict[str, SubjectTarget] = {}
    for name in names:
        purl, problem = _as_purl(name)
        key = purl.canonical if purl is not None else "\0" + name
        seen.setdefault(key, SubjectTarget(name, purl, problem))
    return tuple(seen.values())


def requested_subject_reason(requested: Purl, facts: PayloadFacts) -> Reason | None:
    """Why the payload is not a proof for ``requested``, or None when a subject equals it."""
    if facts.error is not None:
        return None  # the parse error already says why
    if not facts.names_artifact:
        return Reason(
            ReasonCode.NOT_A_SUBJECT,
            f"{requested.canonical} is not a subject: the payload names no artifact",
        )
    targets = subject_targets(facts.subjects)
    if any(t.purl == requested for t in targets):
        return None
    listed = ", ".join(t.label for t in targets[:5]) + (", ..." if len(targets) > 5 else "")
    hint = ""
    if any(t.purl is not None and _same_package(t.purl, requested) for t in targets):
        hint = (
            " (a subject names the same package with another version, qualifiers or subpath;"
            " a subject covers exactly the package URL it names)"
        )
    return Reason(
        ReasonCode.NOT_A_SUBJECT,
        f"{requested.canonical} is not a subject of the statement (subjects: {listed}){hint}",
    )


def _same_package(a: Purl, b: Purl) -> bool:
    return (a.type, a.namespace, a.name) == (b.type, b.namespace, b.name)


def subject_result(name: str, purl: str | None, result: VerificationResult) -> SubjectResult:
    """One artifact's verdict, from the result of judging it against its anchor."""
    return SubjectResult(
        name=name,
        purl=purl,
        ok=result.ok,
        anchor_id=result.anchor_id,
        anchor_pattern=result.anchor_pattern,
        policy_version=result.policy_version,
        verified_keys=result.verified_keys,
        reasons=result.reasons,
    )


def combine_subjects(
    judged: Sequence[tuple[SubjectTarget, VerificationResult]],
) -> VerificationResult:
    """One result for a statement whose subjects were each judged against their own anchor:
    ok only if every subject is; reasons name their subject when there are several; the
    top-level artifact and anchor are the first subject's, and ``subjects`` lists them all."""
    if not judged:
        raise ValueError("no subject to combine")
    first = judged[0][1]
    if len(judged) == 1:  # the common case: the result stands, with its one subject
        target = judged[0][0]
        name = target.purl.canonical if target.purl else None
        return attrs.evolve(first, subjects=(subject_result(target.name, name, first),))
    several = len(judged) > 1
    reasons: list[Reason] = []
    notes: dict[str, None] = {}
    keys: dict[str, VerifiedKey] = {}
    key_times: dict[str, KeyTime] = {}
    subjects: list[SubjectResult] = []
    for target, result in judged:
        prefix = f"subject {target.label}: " if several else ""
        reasons.extend(r.prefixed(prefix) for r in result.reasons)
        notes.update(dict.fromkeys(result.notes))
        for k in result.verified_keys:
            keys.setdefault(k.fingerprint, k)
        for kt in result.key_times:
            key_times.setdefault(kt.key_id, kt)
        subjects.append(
            subject_result(target.name, target.purl.canonical if target.purl else None, result)
        )
    ordered = tuple(sorted(keys.values(), key=lambda k: k.signature_index))
    return attrs.evolve(
        first,
        ok=not reasons,
        reasons=tuple(reasons),
        notes=tuple(notes),
        verified_keys=ordered,
        key_times=tuple(key_times.values()),
        subjects=tuple(subjects),
    )

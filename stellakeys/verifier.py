"""The verifier: one object that answers "does this proof verify, for this artifact, at T?".

In the spirit of sigstore-python's ``Verifier`` + policy: a :class:`Verifier` is built from
its collaborators -- where anchors come from (:class:`AnchorSource`), where keys come from
(:class:`KeySource`) and, optionally, a :class:`~stellakeys.timestamp.TimestampVerifier` --
and :meth:`Verifier.verify` takes the envelope, the artifact, the time and the policy. It does
no I/O of its own and reads no clock: ``now`` is an argument. The sources decide where the
facts live: a store (:class:`StoreSource`, what :class:`~stellakeys.manager.KeyManager` uses),
or plain objects (:class:`StaticSource`: a feed document, a test, an embedding application).

The rules (subject binding, every subject judged, in-toto must parse, key-wide compromise,
threshold) are those of docs/verification.md and decision 0012; they live in
:mod:`stellakeys.binding` and :mod:`stellakeys.verification`, and anchor precedence in
:func:`stellakeys.purl.most_specific_matches`. This module only wires them together.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, runtime_checkable

import attrs

from stellakeys.anchor_keys import AnchorKeys
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.binding import (
    combine_subjects,
    payload_facts,
    requested_subject_reason,
    subject_targets,
)
from stellakeys.dsse import Envelope
from stellakeys.keys import KeyRecord
from stellakeys.purl import Purl, PurlPattern, most_specific_matches, parse_purl
from stellakeys.reasons import Reason, ReasonCode
from stellakeys.verification import (
    SigningTime,
    TimeSource,
    VerificationPolicy,
    VerificationResult,
    evaluate,
    evaluate_key_only,
    key_wide_compromises,
)

if TYPE_CHECKING:
    from stellakeys.timestamp import TimestampVerifier

__all__ = [
    "AnchorLookup",
    "AnchorSource",
    "KeySource",
    "Speculation",
    "SpeculativeSource",
    "StaticSource",
    "Verifier",
    "select_anchor",
]

_NO_COMPROMISE: Mapping[str, datetime] = MappingProxyType({})


@attrs.frozen
class AnchorLookup:
    """The anchor that applies to one artifact, or why none does, with what is known of its
    keys in *every* anchor: fingerprint -> earliest compromise revocation."""

    anchor: TrustAnchor | None = None
    why: Reason | None = None
    compromises: Mapping[str, datetime] = _NO_COMPROMISE
    #: The anchor's keys compiled with ``compromises`` (built on demand when a source does
    #: not keep one per anchor).
    keys: AnchorKeys | None = None


_UNJUDGED = AnchorLookup()


class AnchorSource(Protocol):
    """Port: the applicable anchor for an artifact."""

    def lookup(self, purl: str | Purl) -> AnchorLookup:
        """The anchor for a package URL (its text, or the parsed value: the verifier passes
        what it already parsed, so no PURL is parsed twice)."""
        ...

    def universal(self) -> AnchorLookup:
        """The active universal anchor (``*``): the only one covering a non-PURL subject."""
        ...


class KeySource(Protocol):
    """Port: registered keys, for a key-only check (a payload that names no artifact)."""

    def key_only_view(
        self, key_ids: Collection[str]
    ) -> tuple[Sequence[KeyRecord], Mapping[str, Sequence[KeyHistoryEntry]]]:
        """The keys named by ``key_ids`` (every key when none of them is known) and, per key
        id, its memberships in every anchor, matched by fingerprint (the same public key under
        another id is the same key)."""
        ...


class Speculation(Protocol):
    """A verification answered from a source's cached facts before their freshness is known
    (decision 0027). Used as a context manager around the verification; on leaving, whatever
    is still in flight is collected or dropped, never left pending."""

    def __enter__(self) -> Speculation: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def confirm(self) -> bool:
        """True: every fact the verification used was current when it started, so its result
        stands. False: verify again; the source then answers from facts read after the start."""
        ...


@runtime_checkable
class SpeculativeSource(Protocol):
    """Optional port of an :class:`AnchorSource` whose freshness check is a round trip: the
    verifier starts the check when a verification starts and confirms it before returning."""

    def speculate(self) -> Speculation | None:
        """Start the freshness check (None: the source checks on each lookup instead)."""
        ...


_P = ParamSpec("_P")


#: Patterns are immutable and anchors few compared with lookups: parse each pattern text once.
_pattern = functools.lru_cache(maxsize=65536)(PurlPattern.parse)


def select_anchor(candidates: Iterable[TrustAnchor], purl: Any) -> AnchorLookup:
    """The one active anchor applying to ``purl`` (a parsed :class:`~stellakeys.purl.Purl`;
    None for the universal anchor), by :func:`~stellakeys.purl.most_specific_matches`. A tie
    is a failure naming the anchors, never a silent choice. Compromises are not filled in."""
    best = most_specific_matches(
        purl, ((_pattern(a.purl_pattern), a) for a in candidates if a.active)
    )
    if not best:
        return _UNJUDGED
    if len(best) > 1:
        ids = ", ".join(str(a.anchor_id) for _, a in best[:2])
        return AnchorLookup(
            why=Reason(
                ReasonCode.AMBIGUOUS_ANCHORS,
                f"ambiguous: anchors {ids} apply equally; deactivate one",
            )
        )
    return AnchorLookup(best[0][1])


def _by_fingerprint(entries: Iterable[KeyHistoryEntry]) -> dict[str, list[KeyHistoryEntry]]:
    out: dict[str, list[KeyHistoryEntry]] = {}
    for e in entries:
        out.setdefault(e.fingerprint, []).append(e)
    return out


# --- sources -------------------------------------------------------------------------------------


class StaticSource:
    """Anchors and keys held in memory (a feed document, a test, an embedding application).

    Immutable after construction: ``lookup`` answers from the anchors given, with key-wide
    compromises over all of them. Keys default to every key named by an anchor's history.
    """

    def __init__(
        self, anchors: Iterable[TrustAnchor], keys: Iterable[KeyRecord] | None = None
    ) -> None:
        self._anchors = tuple(anchors)
        everything = [e for a in self._anchors for e in a.key_history]
        self._compromises = key_wide_compromises(everything)
        self._history = _by_fingerprint(everything)
        if keys is None:
            keys = _keys_of(self._anchors)
        self._keys = {r.key_id: r for r in keys}
        #: anchor id -> (its compromises, its compiled keys), built on first lookup.
        self._compiled: dict[uuid.UUID, tuple[Mapping[str, datetime], AnchorKeys]] = {}
        self._lock = threading.Lock()

    def _answer(self, found: AnchorLookup) -> AnchorLookup:
        anchor = found.anchor
        if anchor is None:
            return found
        compiled = self._compiled.get(anchor.anchor_id)
        if compiled is None:
            fps = {e.fingerprint for e in anchor.key_history}
            compromises = MappingProxyType({f: t for f, t in self._compromises.items() if f in fps})
            compiled = (compromises, AnchorKeys(anchor.key_history, compromises))
            with self._lock:
                self._compiled[anchor.anchor_id] = compiled
        return attrs.evolve(found, compromises=compiled[0], keys=compiled[1])

    def lookup(self, purl: str | Purl) -> AnchorLookup:
        parsed = purl if isinstance(purl, Purl) else parse_purl(purl)
        return self._answer(select_anchor(self._anchors, parsed))

    def universal(self) -> AnchorLookup:
        return self._answer(select_anchor(self._anchors, None))

    def key_only_view(
        self, key_ids: Collection[str]
    ) -> tuple[Sequence[KeyRecord], Mapping[str, Sequence[KeyHistoryEntry]]]:
        records = [self._keys[k] for k in key_ids if k in self._keys]
        if not records:
            records = list(self._keys.values())
        return records, {r.key_id: self._history.get(r.fingerprint, []) for r in records}


def _keys_of(anchors: Sequence[TrustAnchor]) -> list[KeyRecord]:
    """A KeyRecord per key id in the anchors' histories (public key from the history)."""
    from stellakeys.keys import KeyOrigin

    keys: dict[str, KeyRecord] = {}
    for anchor in anchors:
        for e in anchor.key_history:
            known = keys.get(e.key_id)
            if known is None or e.added_at < known.created_at:
                keys[e.key_id] = KeyRecord(
                    key_id=e.key_id,
                    algorithm=e.algorithm,
                    public_key_pem=e.public_key_pem,
                    fingerprint=e.fingerprint,
                    created_at=e.added_at,
                    origin=KeyOrigin.IMPORTED,
                )
    return list(keys.values())


# --- the verifier --------------------------------------------------------------------------------

_NO_ARTIFACT = (
    "no artifact PURL: the payload is not an in-toto statement, so it names no"
    " artifact for a trust anchor to cover; sign an in-toto statement whose"
    " subjects are package URLs"
)


class Verifier:
    """Verifies proofs against anchors and keys from its sources. Thread-safe; holds no state
    but its collaborators and a verification count (``verifications``, for metrics)."""

    def __init__(
        self,
        anchors: AnchorSource,
        keys: KeySource,
        *,
        timestamp_verifier: TimestampVerifier | None = None,
        on_verify: Callable[[], None] | None = None,
    ) -> None:
        self.anchors = anchors
        self.keys = keys
        self.timestamp_verifier = timestamp_verifier
        self._on_verify = on_verify
        self._speculate = anchors.speculate if isinstance(anchors, SpeculativeSource) else None
        self._count_lock = threading.Lock()
        self._count = 0
        self._failures: dict[ReasonCode, int] = {}

    @classmethod
    def from_objects(
        cls,
        anchors: Iterable[TrustAnchor],
        keys: Iterable[KeyRecord] | None = None,
        *,
        timestamp_verifier: TimestampVerifier | None = None,
    ) -> Verifier:
        """A verifier over plain anchors (and keys; default: the keys of the anchors)."""
        source = StaticSource(anchors, keys)
        return cls(source, source, timestamp_verifier=timestamp_verifier)

    @property
    def verifications(self) -> int:
        """How many verifications (temporal key lookups) this verifier has made."""
        return self._count

    def failures_by_code(self) -> dict[ReasonCode, int]:
        """Failed verifications so far, counted once per distinct reason code of each."""
        with self._count_lock:
            return dict(self._failures)

    def verify(
        self,
        envelope: Envelope,
        *,
        purl: str | None = None,
        at: datetime | None = None,
        now: datetime,
        policy: VerificationPolicy,
        tokens: Sequence[bytes] = (),
        trusted_time: SigningTime | None = None,
        digest: str | None = None,
        timestamp_verifier: TimestampVerifier | None = None,
    ) -> VerificationResult:
        """Verify ``envelope``: at ``trusted_time`` when given (a verified timestamp), else
        ``at`` (asserted), else ``now``. RFC 3161 ``tokens`` give the signatures they cover
        their own trusted time (``timestamp_verifier`` overrides the verifier's own).
        ``digest`` is the proof's known ``sha256:`` address, if any (else computed on
        demand). Semantics: docs/verification.md."""
        if self._on_verify is not None:
            self._on_verify()
        try:
            result = self._confirmed(
                self._verify,
                envelope,
                purl,
                at,
                now,
                policy,
                tokens,
                trusted_time,
                digest,
                timestamp_verifier,
            )
        finally:
            with self._count_lock:
                self._count += 1
        if not result.ok:
            codes = {r.code for r in result.reasons}
            with self._count_lock:
                for code in codes:
                    self._failures[code] = self._failures.get(code, 0) + 1
        return result

    def _confirmed(
        self, verify: Callable[_P, VerificationResult], *args: _P.args, **kwargs: _P.kwargs
    ) -> VerificationResult:
        """``verify(...)``, speculatively when the anchor source can (decision 0027): its
        freshness check runs beside the verification, and a result computed from facts that
        turn out stale is discarded and computed again from fresh ones."""
        speculation = self._speculate() if self._speculate is not None else None
        if speculation is None:
            return verify(*args, **kwargs)
        with speculation:
            result = verify(*args, **kwargs)
            if speculation.confirm():
                return result
            return verify(*args, **kwargs)

    def _verify(
        self,
        envelope: Envelope,
        purl: str | None,
        at: datetime | None,
        now: datetime,
        policy: VerificationPolicy,
        tokens: Sequence[bytes],
        trusted_time: SigningTime | None,
        digest: str | None,
        timestamp_verifier: TimestampVerifier | None,
    ) -> VerificationResult:
        if trusted_time is not None and trusted_time.source is not TimeSource.TRUSTED:
            raise ValueError("trusted_time must come from a verified timestamp")
        if trusted_time is not None:
            time = trusted_time
        elif at is not None:
            time = SigningTime(at, TimeSource.ASSERTED)
        else:
            time = SigningTime(now, TimeSource.NOW)
        signature_times, issues = self._signature_times(
            envelope, tokens, timestamp_verifier or self.timestamp_verifier
        )
        facts = payload_facts(envelope)

        def judge(
            lookup: AnchorLookup,
            artifact: str | None,
            reasons: Sequence[str],
            subject: tuple[str, str | None] | None = None,
        ) -> VerificationResult:
            return evaluate(
                envelope,
                digest=digest,
                time=time,
                policy=policy,
                anchor=lookup.anchor,
                purl=artifact,
                predicate_type=facts.predicate_type,
                context_reasons=[*reasons, *([lookup.why] if lookup.why else [])],
                signature_times=signature_times,
                timestamp_issues=issues,
                compromises=lookup.compromises,
                keys=lookup.keys,
                subject=subject,
            )

        if purl is not None:
            requested = parse_purl(purl)  # malformed input raises
            unbound = requested_subject_reason(requested, facts)
            reasons = [r for r in (facts.error, unbound) if r]
            return judge(self.anchors.lookup(requested), purl, reasons, (purl, requested.canonical))
        if facts.error is not None:
            return judge(_UNJUDGED, None, [facts.error])
        if not facts.names_artifact:
            if not policy.require_anchor:
                hints = {s.keyid for s in envelope.signatures if s.keyid}
                records, histories = self.keys.key_only_view(hints)
                return evaluate_key_only(
                    envelope,
                    digest=digest,
                    time=time,
                    policy=policy,
                    keys=records,
                    histories=histories,
                    signature_times=signature_times,
                    timestamp_issues=issues,
                )
            return judge(_UNJUDGED, None, [Reason(ReasonCode.NO_ARTIFACT, _NO_ARTIFACT)])
        targets = subject_targets(facts.subjects)
        if len(targets) == 1 and (only := targets[0].purl) is not None:  # the common case
            canonical = only.canonical
            return judge(self.anchors.lookup(only), canonical, [], (targets[0].name, canonical))
        per_subject = []
        # Subjects under one anchor get one verdict (a release's many files, one anchor):
        # the signatures are checked once per anchor, not once per subject.
        by_anchor: dict[uuid.UUID, VerificationResult] = {}
        for target in targets:
            if target.purl is not None:
                lookup = self.anchors.lookup(target.purl)
                anchor = lookup.anchor
                seen = by_anchor.get(anchor.anchor_id) if anchor is not None else None
                if seen is None:
                    seen = judge(lookup, target.purl.canonical, [])
                    if anchor is not None:
                        by_anchor[anchor.anchor_id] = seen
                elif seen.purl != target.purl.canonical:
                    seen = attrs.evolve(seen, purl=target.purl.canonical)
                per_subject.append((target, seen))
                continue
            lookup = self.anchors.universal()
            missing = (
                []
                if lookup.anchor is not None
                else [
                    Reason(
                        ReasonCode.SUBJECT_NOT_A_PURL,
                        f"subject {target.label} is not a package URL ({target.problem}): only"
                        " a universal '*' trust anchor can cover it, and none is active",
                    )
                ]
            )
            per_subject.append((target, judge(lookup, None, missing)))
        return combine_subjects(per_subject)

    @staticmethod
    def _signature_times(
        envelope: Envelope, tokens: Sequence[bytes], verifier: TimestampVerifier | None
    ) -> tuple[dict[int, SigningTime], list[str]]:
        if not tokens:
            return {}, []
        from stellakeys.timestamp import parse_token, signature_times

        parsed = [parse_token(t) for t in dict.fromkeys(bytes(t) for t in tokens)]
        return signature_times(envelope, parsed, verifier)

"""Temporal verification of a proof against a trust anchor. Pure: no I/O, no clock.

The question answered is "was this envelope validly signed, for this artifact, by a key the
applicable anchor trusted at time T?", where T and its source are explicit:

* ``trusted``  - a verified RFC 3161 timestamp over the signature;
* ``asserted`` - a time the verifier supplies (``--at-time``, a forensic question);
* ``now``      - the verifier's current time.

A time claimed inside the payload is never used. A key revoked for ``compromise`` verifies
only with trusted time before its revocation, since whoever stole it can back-date anything;
and a compromise is a fact about the key, not one anchor: ``compromises`` (fingerprint ->
earliest compromise revocation in any anchor) applies it in every anchor holding the key.

Which artifacts a proof is judged for (subject binding) is decided in
:mod:`stellakeys.binding`; this module judges one artifact's anchor at a time.

Trusted time is per signature: an RFC 3161 token covers the bytes of one signature, so it
dates that signature and no other. ``signature_times`` maps a signature's index to its trusted
time; every other signature is judged at the proof's time (asserted or now). A key counts
toward the threshold when its own signature's time falls in its validity window.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from stellakeys._display import render_html
from stellakeys.anchor_keys import AnchorKeys
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.crypto import PublicKey
from stellakeys.dsse import Envelope, EnvelopeVerification, VerifiedKey, verify_envelope
from stellakeys.errors import PolicyError
from stellakeys.key_validity import (
    _compromised,
    _entry_rejection,
    _key_rejection,
    key_wide_compromises,
)
from stellakeys.keys import KeyRecord, public_key_of_pem
from stellakeys.reasons import Reason, ReasonCode, reason_code
from stellakeys.signing_time import KeyTime, SigningTime, TimeSource
from stellakeys.times import format_time

__all__ = [
    "KeyTime",
    "Reason",
    "ReasonCode",
    "SigningTime",
    "SubjectResult",
    "TimeSource",
    "VerificationPolicy",
    "VerificationResult",
    "evaluate",
    "evaluate_key_only",
    "key_wide_compromises",
]


def as_reasons(values: Sequence[str]) -> tuple[Reason, ...]:
    """Reasons as :class:`Reason`; a plain string (a caller's own context) is ``OTHER``."""
    if not values:  # the verified case, on every result
        return ()
    return tuple(v if isinstance(v, Reason) else Reason(ReasonCode.OTHER, v) for v in values)


def _check_threshold(instance: object, attribute: object, value: object) -> None:
    # bool is an int; True as "one key" is a typo waiting to become False as "no key".
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PolicyError(f"verification threshold must be an integer >= 1, not {value!r}")


def _check_flag(instance: object, attribute: Any, value: object) -> None:
    if not isinstance(value, bool):
        raise PolicyError(f"VerificationPolicy.{attribute.name} must be True or False")


@attrs.frozen
class VerificationPolicy:
    """What a verifier demands beyond a valid signature. Checked at construction (and by
    ``attrs.evolve``): a policy that exists is a valid one, so no path can meet a threshold
    of zero keys."""

    #: Distinct anchor keys that must have signed (>= 1).
    threshold: int = attrs.field(default=1, validator=_check_threshold)
    #: Demand a verified timestamp for every key, not only for compromised ones.
    require_trusted_time: bool = attrs.field(default=False, validator=_check_flag)
    #: Without an artifact no anchor applies; by default that is a failure. ``False`` allows a
    #: key-only check (signature by a registered key valid at T) for payloads that name no
    #: artifact -- never for an in-toto statement (the runbook's ``echo test | sign | verify``).
    require_anchor: bool = attrs.field(default=True, validator=_check_flag)


def threshold_met(verified: Sequence[VerifiedKey], policy: VerificationPolicy) -> bool:
    """The one threshold check of every verification path: at least ``policy.threshold``
    distinct keys counted, and never fewer than one, whatever the policy object claims."""
    _check_threshold(None, None, policy.threshold)  # a policy forged past its validator
    return len({k.fingerprint for k in verified}) >= policy.threshold


@attrs.frozen
class SubjectResult:
    """How one subject (artifact) of a statement was judged: the anchor that applied and
    the keys that covered it at T, or why it is not covered."""

    #: The subject's name as the statement gives it (``""`` when it has none).
    name: str
    #: The normalised package URL, or None for a subject whose name is not one.
    purl: str | None
    ok: bool
    anchor_id: uuid.UUID | None = None
    anchor_pattern: str | None = None
    policy_version: str | None = None
    verified_keys: tuple[VerifiedKey, ...] = ()
    reasons: tuple[Reason, ...] = attrs.field(default=(), converter=as_reasons)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.verified_keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "purl": self.purl,
            "ok": self.ok,
            "anchorId": str(self.anchor_id) if self.anchor_id else None,
            "anchorPattern": self.anchor_pattern,
            "policyVersion": self.policy_version,
            "keyIds": list(self.key_ids),
            "reasons": list(self.reasons),
            "reasonCodes": [reason_code(r).value for r in self.reasons],
        }


@attrs.frozen
class VerificationResult:
    ok: bool
    time: datetime
    time_source: TimeSource
    #: The envelope that was verified (its digest is computed on demand: hashing the canonical
    #: JSON costs as much as the rest of a verification's bookkeeping).
    envelope: Envelope = attrs.field(repr=False)
    payload_type: str
    purl: str | None = None
    predicate_type: str | None = None
    anchor_id: uuid.UUID | None = None
    anchor_pattern: str | None = None
    policy_version: str | None = None
    verified_keys: tuple[VerifiedKey, ...] = ()
    #: Every reason the proof does not verify, each with its code; empty when ``ok``.
    reasons: tuple[Reason, ...] = attrs.field(default=(), converter=as_reasons)
    #: Informational notes that do not affect ``ok`` (e.g. "key-only check").
    notes: tuple[str, ...] = ()
    time_detail: str | None = None
    #: Per counted key, when signatures had different times (some had trusted time).
    key_times: tuple[KeyTime, ...] = ()
    #: The ``sha256:`` address when the caller already knew it (a stored proof).
    known_digest: str | None = attrs.field(default=None, eq=False, repr=False)
    #: Every artifact judged, one entry per distinct subject (or the one requested): which
    #: anchor and keys covered it. Empty for a key-only check and for a payload that failed
    #: before any artifact could be judged.
    subjects: tuple[SubjectResult, ...] = ()
    #: True when no anchor policy applied: the payload names no artifact (docs/verification.md).
    key_only: bool = False

    @property
    def envelope_digest(self) -> str:
        """``sha256:<hex>``: the proof's content address."""
        return self.known_digest or self.envelope.digest()

    @property
    def key_id(self) -> str | None:
        return self.verified_keys[0].key_id if self.verified_keys else None

    @property
    def algorithm(self) -> str | None:
        return self.verified_keys[0].algorithm if self.verified_keys else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "proof": self.envelope_digest,
            "payloadType": self.payload_type,
            "purl": self.purl,
            "predicateType": self.predicate_type,
            "anchorId": str(self.anchor_id) if self.anchor_id else None,
            "anchorPattern": self.anchor_pattern,
            "policyVersion": self.policy_version,
            "keyId": self.key_id,
            "algorithm": self.algorithm,
            "keys": [self._key_dict(k) for k in self.verified_keys],
            "time": format_time(self.time),
            "timeSource": self.time_source.value,
            "timeDetail": self.time_detail,
            "reasons": list(self.reasons),
            "reasonCodes": [reason_code(r).value for r in self.reasons],
            "notes": list(self.notes),
            "keyOnly": self.key_only,
            "subjects": [s.to_dict() for s in self.subjects],
        }

    def _repr_html_(self) -> str | None:
        # Jupyter display, rendered by stellakeys.notebook once imported (the core does not
        # import presentation code); None makes Jupyter fall back to the plain repr.
        return render_html(self)

    def _key_dict(self, key: VerifiedKey) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keyId": key.key_id,
            "fingerprint": key.fingerprint,
            "algorithm": key.algorithm,
        }
        for kt in self.key_times:
            if kt.key_id == key.key_id:
                out["time"] = format_time(kt.time.at)
                out["timeSource"] = kt.time.source.value
                out["timeDetail"] = kt.time.detail
        return out


#: (message, whether trusted time could have changed the answer) for a rejected signer.
_Rejection = tuple[Reason, bool]


def evaluate(
    envelope: Envelope,
    *,
    digest: str | None,
    time: SigningTime,
    policy: VerificationPolicy,
    anchor: TrustAnchor | None,
    purl: str | None,
    predicate_type: str | None,
    context_reasons: Sequence[str] = (),
    signature_times: Mapping[int, SigningTime] | None = None,
    timestamp_issues: Sequence[str] = (),
    compromises: Mapping[str, datetime] | None = None,
    keys: AnchorKeys | None = None,
    subject: tuple[str, str | None] | None = None,
) -> VerificationResult:
    """Check ``envelope`` against ``anchor`` at ``time``. The caller resolved the anchor (the
    one applicable to ``purl``), the predicate type, and may pass reasons it found earlier.

    ``compromises`` maps a key fingerprint to the earliest time it was revoked for compromise
    in *any* anchor (:func:`key_wide_compromises` of the store's
    ``history_by_fingerprints``); the anchor's own history is judged as if that revocation
    were recorded in it too. Callers that omit it get only this anchor's own record.

    ``signature_times`` gives signatures their own (trusted) time by index; the others are
    judged at ``time``. ``timestamp_issues`` are tokens that gave no trusted time: they become
    reasons when a signer was rejected for lack of trusted time (they say why there was
    none), notes otherwise.

    ``keys`` is the anchor's history compiled once (:class:`~stellakeys.anchor_keys.
    AnchorKeys` over the same ``compromises``); sources that keep anchors pass it so that a
    verification looks at the keys the signatures name, not the whole history.

    ``subject`` is ``(name, canonical PURL)`` of the one artifact judged: the result then
    lists it in ``subjects`` (built here, not by copying the result afterwards).
    """
    reasons = list(as_reasons(context_reasons))
    times = _times_of(envelope, time, signature_times)
    require = policy.require_trusted_time
    outcome: EnvelopeVerification | None = None
    lacking = False
    if anchor is None:
        if purl is not None:
            reasons.append(
                Reason(ReasonCode.NO_TRUST_ANCHOR, f"no active trust anchor matches {purl}")
            )
    else:
        if predicate_type is None:
            reasons.append(
                Reason(
                    ReasonCode.NOT_A_STATEMENT,
                    "payload is not an in-toto statement, so it has no predicateType",
                )
            )
        elif not anchor.allows_predicate(predicate_type):
            allowed = ", ".join(anchor.allowed_predicate_types) or "none"
            reasons.append(
                Reason(
                    ReasonCode.PREDICATE_TYPE_NOT_ALLOWED,
                    f"predicateType {predicate_type} is not allowed by the anchor ({allowed})",
                )
            )
        if keys is None:
            keys = AnchorKeys(anchor.key_history, compromises or {})
        history = keys.entries

        # Hot path: decide usability with comparisons only, first among the keys the
        # signatures name; the wording of why a key is not usable is worked out in
        # _explain_failure, only when the proof fails.
        def keyring_of(entries: Sequence[KeyHistoryEntry]) -> Callable[[SigningTime], Keyring]:
            return lambda at: AnchorKeys.keyring_at(entries, at, require)

        hinted = keys.hinted([s.keyid for s in envelope.signatures])
        outcome = _count(envelope, time, times, keyring_of(hinted or history), policy.threshold)
        if hinted is not None and (
            outcome is None or len(outcome.verified) < len(envelope.signatures)
        ):
            # Hints are not authenticated: a signature may be by another key of the anchor
            # than the one it names. When any signature did not verify with the named keys,
            # every key, as if there were no hints (the same verdict and the same keys).
            outcome = _count(envelope, time, times, keyring_of(history), policy.threshold)
        if outcome is None or not threshold_met(outcome.verified, policy):
            entries = {e.key_id: e for e in history}

            def rejection(key_id: str, at: SigningTime) -> _Rejection | None:
                entry = entries[key_id]
                why = _entry_rejection(entry, at, require)
                if why is None:
                    return None
                return why, at.source is not TimeSource.TRUSTED and (require or _compromised(entry))

            everyone = {k: public_key_of_pem(e.public_key_pem) for k, e in entries.items()}
            why_not, lacking, _ = _explain_failure(
                envelope, time, times, everyone, outcome, rejection
            )
            reasons.extend(why_not)
            have = len(outcome.verified) if outcome else 0
            if not why_not or not threshold_met(outcome.verified if outcome else (), policy):
                if have == 0:
                    reasons.append(
                        Reason(
                            ReasonCode.NO_VALID_SIGNATURE,
                            "no signature verifies with a key the anchor trusted at T",
                        )
                    )
                else:
                    reasons.append(
                        Reason(
                            ReasonCode.THRESHOLD_NOT_MET,
                            f"{have} of {policy.threshold} required anchor keys signed",
                        )
                    )
    reasons, notes = _place_issues(reasons, [], timestamp_issues, lacking)
    reported = _reported_time(time, times, outcome)
    verified = outcome.verified if outcome is not None else ()
    final = tuple(reasons)
    subjects = (
        (
            SubjectResult(
                name=subject[0],
                purl=subject[1],
                ok=not final,
                anchor_id=anchor.anchor_id if anchor else None,
                anchor_pattern=anchor.purl_pattern if anchor else None,
                policy_version=anchor.policy_version if anchor else None,
                verified_keys=verified,
                reasons=final,
            ),
        )
        if subject is not None
        else ()
    )
    return VerificationResult(
        subjects=subjects,
        ok=not reasons,
        time=reported.at,
        time_source=reported.source,
        time_detail=reported.detail,
        envelope=envelope,
        known_digest=digest,
        payload_type=envelope.payload_type,
        purl=purl,
        predicate_type=predicate_type,
        anchor_id=anchor.anchor_id if anchor else None,
        anchor_pattern=anchor.purl_pattern if anchor else None,
        policy_version=anchor.policy_version if anchor else None,
        verified_keys=verified,
        reasons=final,
        notes=tuple(notes),
        key_times=_key_times(times, outcome),
    )


Keyring = dict[str, PublicKey]


def _times_of(
    envelope: Envelope, time: SigningTime, signature_times: Mapping[int, SigningTime] | None
) -> tuple[SigningTime, ...] | None:
    """Each signature's time, or None when they all share ``time`` (the common case)."""
    if not signature_times:
        return None
    return tuple(signature_times.get(i, time) for i in range(len(envelope.signatures)))


def _count(
    envelope: Envelope,
    time: SigningTime,
    times: tuple[SigningTime, ...] | None,
    keyring_at: Callable[[SigningTime], dict[str, PublicKey]],
    threshold: int,
) -> EnvelopeVerification | None:
    """The distinct keys whose signatures verify with a key usable at that signature's time;
    None when no key is usable at all."""
    if times is None or len(set(times)) == 1:
        keyring = keyring_at(times[0] if times else time)
        return verify_envelope(envelope, keyring, threshold) if keyring else None
    # One check per distinct time. Trusted times first: a key that signed twice counts once,
    # and then preferably by its timestamped signature.
    groups: dict[SigningTime, list[int]] = {}
    for i in sorted(range(len(times)), key=lambda i: times[i].source is not TimeSource.TRUSTED):
        groups.setdefault(times[i], []).append(i)
    verified: dict[str, VerifiedKey] = {}
    for at, indices in groups.items():
        keyring = keyring_at(at)
        if not keyring:
            continue
        part = attrs.evolve(envelope, signatures=tuple(envelope.signatures[i] for i in indices))
        for key in verify_envelope(part, keyring, 1).verified:
            if key.fingerprint not in verified:
                index = indices[key.signature_index]
                verified[key.fingerprint] = attrs.evolve(key, signature_index=index)
    ordered = tuple(sorted(verified.values(), key=lambda k: k.signature_index))
    return EnvelopeVerification(threshold, ordered, ())


def _explain_failure(
    envelope: Envelope,
    time: SigningTime,
    times: tuple[SigningTime, ...] | None,
    everyone: Mapping[str, PublicKey],
    outcome: EnvelopeVerification | None,
    rejection: Callable[[str, SigningTime], _Rejection | None],
) -> tuple[list[Reason], bool, tuple[VerifiedKey, ...]]:
    """Forensic detail: which known keys did sign, and why they do not count at their time.
    Returns (reasons, whether some signer lacked trusted time it needed, who signed)."""
    reasons: list[Reason] = []
    lacking = False
    signed_by = verify_envelope(envelope, everyone, 1).verified if everyone else ()
    counted = {k.key_id for k in outcome.verified} if outcome else set()
    for key in signed_by:
        if key.key_id in counted:
            continue
        found = rejection(key.key_id, times[key.signature_index] if times else time)
        if found is not None:
            reasons.append(found[0])
            lacking = lacking or found[1]
    return reasons, lacking, signed_by


def _issue(text: str) -> Reason:
    # The wording of stellakeys.timestamp.signature_times: a token that covers no signature
    # is unused; any other gave no trusted time (no roots, or it does not verify).
    if isinstance(text, Reason):
        return text
    unused = text.endswith("covers none of the envelope's signatures")
    code = ReasonCode.TIMESTAMP_UNUSED if unused else ReasonCode.TIMESTAMP_NO_TRUSTED_TIME
    return Reason(code, text)


def _place_issues(
    reasons: list[Reason], notes: list[str], issues: Sequence[str], lacking: bool
) -> tuple[list[Reason], list[str]]:
    """Tokens that gave no trusted time explain a failure that trusted time would have
    changed (reasons); otherwise they are only worth a note."""
    if reasons and lacking:
        return reasons + [_issue(i) for i in issues], notes
    return reasons, notes + list(issues)


def _reported_time(
    time: SigningTime,
    times: tuple[SigningTime, ...] | None,
    outcome: EnvelopeVerification | None,
) -> SigningTime:
    """The proof's time for the result: trusted only when every signature that counted (or,
    if none did, every signature) has trusted time; then the latest of them, the moment by
    which all those signatures provably existed. Otherwise the asserted or current time."""
    if times is None:
        return time
    considered = (
        [times[k.signature_index] for k in outcome.verified]
        if outcome is not None and outcome.verified
        else list(times)
    )
    if not considered or any(t.source is not TimeSource.TRUSTED for t in considered):
        return time
    details = dict.fromkeys(t.detail for t in considered if t.detail)
    return SigningTime(
        max(t.at for t in considered), TimeSource.TRUSTED, "; ".join(details) or None
    )


def _key_times(
    times: tuple[SigningTime, ...] | None, outcome: EnvelopeVerification | None
) -> tuple[KeyTime, ...]:
    if times is None or outcome is None:
        return ()
    return tuple(KeyTime(k.key_id, times[k.signature_index]) for k in outcome.verified)


def evaluate_key_only(
    envelope: Envelope,
    *,
    digest: str | None,
    time: SigningTime,
    policy: VerificationPolicy,
    keys: Sequence[KeyRecord],
    histories: Mapping[str, Sequence[KeyHistoryEntry]],
    signature_times: Mapping[int, SigningTime] | None = None,
    timestamp_issues: Sequence[str] = (),
) -> VerificationResult:
    """Signature by a registered key, without anchor policy (no artifact was named).

    A key counts unless it was revoked at or before T in every anchor holding it, and a key
    ever revoked for compromise counts only with trusted time before that revocation.
    ``signature_times`` and ``timestamp_issues`` as for :func:`evaluate`.
    """
    reasons: list[Reason] = []
    times = _times_of(envelope, time, signature_times)
    require = policy.require_trusted_time
    records = {r.key_id: r for r in keys}

    def why(key_id: str, at: SigningTime) -> Reason | None:
        return _key_rejection(key_id, histories.get(key_id, ()), at, require)

    def keyring_at(at: SigningTime) -> dict[str, PublicKey]:
        return {
            k: public_key_of_pem(r.public_key_pem) for k, r in records.items() if why(k, at) is None
        }

    def rejection(key_id: str, at: SigningTime) -> _Rejection | None:
        found = why(key_id, at)
        if found is None:
            return None
        compromised = any(_compromised(e) for e in histories.get(key_id, ()))
        return found, at.source is not TimeSource.TRUSTED and (require or compromised)

    outcome = _count(envelope, time, times, keyring_at, policy.threshold)
    lacking = False
    if outcome is None or not threshold_met(outcome.verified, policy):
        everyone = {k: public_key_of_pem(r.public_key_pem) for k, r in records.items()}
        why_not, lacking, signed_by = _explain_failure(
            envelope, time, times, everyone, outcome, rejection
        )
        reasons.extend(why_not)
        have = len(outcome.verified) if outcome else 0
        if have == 0 and not signed_by:
            reasons.append(
                Reason(ReasonCode.NO_VALID_SIGNATURE, "no signature verifies with a registered key")
            )
        elif not reasons:
            reasons.append(
                Reason(
                    ReasonCode.THRESHOLD_NOT_MET,
                    f"{have} of {policy.threshold} required keys signed",
                )
            )
    reasons, notes = _place_issues(
        reasons,
        [
            f"key-only check: the payload ({envelope.payload_type!r}) names no artifact, so no"
            " trust anchor policy was applied"
        ],
        timestamp_issues,
        lacking,
    )
    reported = _reported_time(time, times, outcome)
    return VerificationResult(
        ok=not reasons,
        time=reported.at,
        time_source=reported.source,
        time_detail=reported.detail,
        envelope=envelope,
        known_digest=digest,
        payload_type=envelope.payload_type,
        verified_keys=outcome.verified if outcome is not None else (),
        reasons=tuple(reasons),
        notes=tuple(notes),
        key_times=_key_times(times, outcome),
        key_only=True,
    )

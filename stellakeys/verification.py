"""Temporal verification of a proof against a trust anchor. Pure: no I/O, no clock.

The question answered is "was this envelope validly signed, for this artifact, by a key the
applicable anchor trusted at time T?", where T and its source are explicit:

* ``trusted``  - a verified RFC 3161 timestamp over the signature;
* ``asserted`` - a time the verifier supplies (``--at-time``, a forensic question);
* ``now``      - the verifier's current time.

A time claimed inside the payload is never used. A key revoked for ``compromise`` verifies
only with trusted time before its revocation, since whoever stole it can back-date anything.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.crypto import PublicKey
from stellakeys.dsse import Envelope, EnvelopeVerification, VerifiedKey, verify_envelope
from stellakeys.keys import KeyRecord, public_key_of_pem
from stellakeys.times import format_time

__all__ = [
    "SigningTime",
    "TimeSource",
    "VerificationPolicy",
    "VerificationResult",
    "evaluate",
    "evaluate_key_only",
]


class TimeSource(enum.StrEnum):
    TRUSTED = "trusted"
    ASSERTED = "asserted"
    NOW = "now"


@attrs.frozen
class SigningTime:
    at: datetime
    source: TimeSource
    #: Where the time came from, e.g. the TSA's name for trusted time.
    detail: str | None = None


@attrs.frozen
class VerificationPolicy:
    """What a verifier demands beyond a valid signature."""

    #: Distinct anchor keys that must have signed.
    threshold: int = 1
    #: Demand a verified timestamp for every key, not only for compromised ones.
    require_trusted_time: bool = False
    #: Without an artifact PURL no anchor applies; by default that is a failure. ``False``
    #: allows a key-only check (signature by a registered key valid at T), which the CLI uses
    #: for envelopes that name no artifact (the runbook's ``echo test | sign | verify``).
    require_anchor: bool = True


@attrs.frozen
class VerificationResult:
    ok: bool
    time: datetime
    time_source: TimeSource
    envelope_digest: str
    payload_type: str
    purl: str | None = None
    predicate_type: str | None = None
    anchor_id: uuid.UUID | None = None
    anchor_pattern: str | None = None
    policy_version: str | None = None
    verified_keys: tuple[VerifiedKey, ...] = ()
    #: Every reason the proof does not verify; empty when ``ok``.
    reasons: tuple[str, ...] = ()
    #: Informational notes that do not affect ``ok`` (e.g. "key-only check").
    notes: tuple[str, ...] = ()
    time_detail: str | None = None

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
            "keys": [
                {"keyId": k.key_id, "fingerprint": k.fingerprint, "algorithm": k.algorithm}
                for k in self.verified_keys
            ],
            "time": format_time(self.time),
            "timeSource": self.time_source.value,
            "timeDetail": self.time_detail,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
        }


def _entry_rejection(entry: KeyHistoryEntry, time: SigningTime) -> str | None:
    """Why this anchor key cannot vouch for a signature at ``time``, or None if it can."""
    at = time.at
    if at < entry.added_at:
        return f"key {entry.key_id} was added at {format_time(entry.added_at)}, after T"
    if entry.revoked_at is not None and at >= entry.revoked_at:
        return (
            f"key {entry.key_id} was revoked at {format_time(entry.revoked_at)}"
            f" ({entry.revoke_reason}), at or before T"
        )
    if entry.expires_at is not None and at >= entry.expires_at:
        return f"key {entry.key_id} expired at {format_time(entry.expires_at)}, at or before T"
    if entry.compromised and time.source is not TimeSource.TRUSTED:
        return (
            f"key {entry.key_id} was revoked for compromise; only a trusted timestamp before"
            f" {format_time(entry.revoked_at or at)} can show it signed earlier"
            f" ({time.source.value} time is not enough)"
        )
    return None


def evaluate(
    envelope: Envelope,
    *,
    digest: str,
    time: SigningTime,
    policy: VerificationPolicy,
    anchor: TrustAnchor | None,
    purl: str | None,
    predicate_type: str | None,
    context_reasons: Sequence[str] = (),
) -> VerificationResult:
    """Check ``envelope`` against ``anchor`` at ``time``. The caller resolved the anchor (the
    one applicable to ``purl``), the predicate type, and may pass reasons it found earlier."""
    reasons = list(context_reasons)
    if policy.require_trusted_time and time.source is not TimeSource.TRUSTED:
        reasons.append(f"policy requires trusted time; only {time.source.value} time available")
    outcome: EnvelopeVerification | None = None
    if anchor is None:
        if purl is not None:
            reasons.append(f"no active trust anchor matches {purl}")
    else:
        if predicate_type is None:
            reasons.append("payload is not an in-toto statement, so it has no predicateType")
        elif not anchor.allows_predicate(predicate_type):
            allowed = ", ".join(anchor.allowed_predicate_types) or "none"
            reasons.append(
                f"predicateType {predicate_type} is not allowed by the anchor ({allowed})"
            )
        # Hot path: decide usability with comparisons only; the wording of why a key is not
        # usable is worked out in _explain_failure, only when the proof fails.
        usable = {
            e.key_id: public_key_of_pem(e.public_key_pem)
            for e in anchor.key_history
            if _usable(e, time)
        }
        outcome = verify_envelope(envelope, usable, policy.threshold) if usable else None
        if outcome is None or not outcome.ok:
            reasons.extend(_explain_failure(envelope, anchor, outcome, time, policy.threshold))
    return VerificationResult(
        ok=not reasons,
        time=time.at,
        time_source=time.source,
        time_detail=time.detail,
        envelope_digest=digest,
        payload_type=envelope.payload_type,
        purl=purl,
        predicate_type=predicate_type,
        anchor_id=anchor.anchor_id if anchor else None,
        anchor_pattern=anchor.purl_pattern if anchor else None,
        policy_version=anchor.policy_version if anchor else None,
        verified_keys=outcome.verified if outcome is not None else (),
        reasons=tuple(reasons),
    )


def _usable(entry: KeyHistoryEntry, time: SigningTime) -> bool:
    return entry.valid_at(time.at) and (not entry.compromised or time.source is TimeSource.TRUSTED)


def _explain_failure(
    envelope: Envelope,
    anchor: TrustAnchor,
    outcome: EnvelopeVerification | None,
    time: SigningTime,
    threshold: int,
) -> list[str]:
    """Forensic detail: which anchor keys did sign, and why they do not count at T."""
    reasons: list[str] = []
    rejections = {
        e.key_id: why for e in anchor.key_history if (why := _entry_rejection(e, time)) is not None
    }
    if rejections:
        everyone = {e.key_id: public_key_of_pem(e.public_key_pem) for e in anchor.key_history}
        signed_by = verify_envelope(envelope, everyone, 1).verified
        counted = {k.key_id for k in outcome.verified} if outcome else set()
        reasons.extend(rejections[k.key_id] for k in signed_by if k.key_id not in counted)
    have = len(outcome.verified) if outcome else 0
    if not reasons or have < threshold:
        if have == 0:
            reasons.append("no signature verifies with a key the anchor trusted at T")
        else:
            reasons.append(f"{have} of {threshold} required anchor keys signed")
    return reasons


def evaluate_key_only(
    envelope: Envelope,
    *,
    digest: str,
    time: SigningTime,
    policy: VerificationPolicy,
    keys: Sequence[KeyRecord],
    histories: Mapping[str, Sequence[KeyHistoryEntry]],
) -> VerificationResult:
    """Signature by a registered key, without anchor policy (no artifact was named).

    A key counts unless it was revoked at or before T in every anchor holding it, and a key
    ever revoked for compromise counts only with trusted time before that revocation.
    """
    reasons: list[str] = []
    if policy.require_trusted_time and time.source is not TimeSource.TRUSTED:
        reasons.append(f"policy requires trusted time; only {time.source.value} time available")
    usable: dict[str, PublicKey] = {}
    rejections: dict[str, str] = {}
    for record in keys:
        entries = histories.get(record.key_id, ())
        why = None
        if entries:
            whys = [_entry_rejection(e, time) for e in entries]
            compromised = [w for e, w in zip(entries, whys, strict=True) if e.compromised and w]
            why = compromised[0] if compromised else (whys[0] if all(whys) else None)
        if why is None:
            usable[record.key_id] = public_key_of_pem(record.public_key_pem)
        else:
            rejections[record.key_id] = why
    outcome = verify_envelope(envelope, usable, policy.threshold) if usable else None
    if outcome is None or not outcome.ok:
        everyone = {r.key_id: public_key_of_pem(r.public_key_pem) for r in keys}
        signed_by = verify_envelope(envelope, everyone, 1).verified if everyone else ()
        reasons.extend(rejections[k.key_id] for k in signed_by if k.key_id in rejections)
        have = len(outcome.verified) if outcome else 0
        if have == 0 and not signed_by:
            reasons.append("no signature verifies with a registered key")
        elif have < policy.threshold and not reasons:
            reasons.append(f"{have} of {policy.threshold} required keys signed")
    return VerificationResult(
        ok=not reasons,
        time=time.at,
        time_source=time.source,
        time_detail=time.detail,
        envelope_digest=digest,
        payload_type=envelope.payload_type,
        verified_keys=outcome.verified if outcome is not None else (),
        reasons=tuple(reasons),
        notes=("key-only check: no artifact PURL, so no trust anchor policy was applied",),
    )

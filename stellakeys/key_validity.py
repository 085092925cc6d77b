"""Whether one key could vouch for a signature at a time, and why not. Pure.

The per-key rules of docs/verification.md: membership window, revocation (a compromise is a
fact about the key, applied in every anchor holding it) and trusted time. Used by
:mod:`stellakeys.verification`, which re-exports :func:`key_wide_compromises`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import attrs

from stellakeys.anchors import KeyHistoryEntry
from stellakeys.reasons import Reason, ReasonCode
from stellakeys.revocation import is_compromise
from stellakeys.signing_time import SigningTime, TimeSource
from stellakeys.times import format_time

__all__ = ["key_wide_compromises"]


def _entry_rejection(
    entry: KeyHistoryEntry, time: SigningTime, require_trusted: bool = False
) -> Reason | None:
    """Why this anchor key cannot vouch for a signature at ``time``, or None if it can."""
    at = time.at
    if at < entry.added_at:
        return Reason(
            ReasonCode.KEY_NOT_YET_VALID,
            f"key {entry.key_id} was added at {format_time(entry.added_at)}, after T",
        )
    if entry.revoked_at is not None and at >= entry.revoked_at:
        return Reason(
            ReasonCode.KEY_COMPROMISED if _compromised(entry) else ReasonCode.KEY_REVOKED,
            f"key {entry.key_id} was revoked at {format_time(entry.revoked_at)}"
            f" ({entry.revoke_reason}), at or before T",
        )
    if entry.expires_at is not None and at >= entry.expires_at:
        return Reason(
            ReasonCode.KEY_EXPIRED,
            f"key {entry.key_id} expired at {format_time(entry.expires_at)}, at or before T",
        )
    if _compromised(entry) and time.source is not TimeSource.TRUSTED:
        return Reason(
            ReasonCode.COMPROMISED_WITHOUT_TRUSTED_TIME,
            f"key {entry.key_id} was revoked for compromise; only a trusted timestamp before"
            f" {format_time(entry.revoked_at or at)} can show it signed earlier"
            f" ({time.source.value} time is not enough)",
        )
    if require_trusted and time.source is not TimeSource.TRUSTED:
        return _untrusted(entry.key_id, time)
    return None


def _compromised(entry: KeyHistoryEntry) -> bool:
    # Every spelling of the reason (stores written before the closed vocabulary hold free
    # text): "Compromised" must not escape the rule that "compromise" triggers.
    return is_compromise(entry.revoke_reason)


def key_wide_compromises(entries: Sequence[KeyHistoryEntry]) -> dict[str, datetime]:
    """Fingerprint -> earliest compromise revocation among ``entries`` (a key's memberships
    in every anchor, active or not): the input ``compromises`` of :func:`evaluate`."""
    out: dict[str, datetime] = {}
    for e in entries:
        if e.revoked_at is not None and _compromised(e):
            known = out.get(e.fingerprint)
            out[e.fingerprint] = e.revoked_at if known is None else min(known, e.revoked_at)
    return out


def _with_compromise(
    entry: KeyHistoryEntry, compromises: Mapping[str, datetime]
) -> KeyHistoryEntry:
    """The entry as verification must see it: revoked for compromise from the earliest
    compromise of its key in any anchor (or its own earlier revocation), whatever this
    anchor recorded. The stored entry is not changed; this is a view."""
    at = compromises.get(entry.fingerprint)
    if at is None:
        return entry
    revoked = at if entry.revoked_at is None else min(at, entry.revoked_at)
    return attrs.evolve(entry, revoked_at=revoked, revoke_reason="compromise")


def _untrusted(key_id: str, time: SigningTime) -> Reason:
    return Reason(
        ReasonCode.TRUSTED_TIME_REQUIRED,
        f"policy requires trusted time; the signature by key {key_id} has only"
        f" {time.source.value} time (no verified timestamp covers it)",
    )


def _usable(entry: KeyHistoryEntry, time: SigningTime, require_trusted: bool = False) -> bool:
    return entry.valid_at(time.at) and (
        time.source is TimeSource.TRUSTED or not (_compromised(entry) or require_trusted)
    )


def _key_rejection(
    key_id: str,
    entries: Sequence[KeyHistoryEntry],
    time: SigningTime,
    require_trusted: bool,
) -> Reason | None:
    """Key-only checks: a key counts unless it was revoked at or before T in every anchor
    holding it; a compromise anywhere needs trusted time before that revocation."""
    if entries:
        whys = [_entry_rejection(e, time) for e in entries]
        compromised = [w for e, w in zip(entries, whys, strict=True) if _compromised(e) and w]
        if compromised:
            return compromised[0]
        if all(whys):
            return whys[0]
    if require_trusted and time.source is not TimeSource.TRUSTED:
        return _untrusted(key_id, time)
    return None

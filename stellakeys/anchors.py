"""Trust anchors and their key history: which keys may sign for which artifacts, and when."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from stellakeys._display import render_html
from stellakeys.revocation import RevocationReason, is_compromise, merge_revocation
from stellakeys.times import format_time

__all__ = ["COMPROMISE", "KeyHistoryEntry", "TrustAnchor"]

#: The revocation reason that marks a key as stolen: it then verifies only with trusted time.
COMPROMISE = RevocationReason.COMPROMISE.value


@attrs.frozen
class KeyHistoryEntry:
    """One key's membership of one anchor. Valid on ``[added_at, min(revoked_at, expires_at))``.

    Entries are never deleted; revoking sets ``revoked_at`` (which may be past, now or future).
    """

    anchor_id: uuid.UUID
    key_id: str
    algorithm: str
    public_key_pem: str
    fingerprint: str
    added_at: datetime
    revoked_at: datetime | None = None
    revoke_reason: str | None = None
    expires_at: datetime | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    entry_id: uuid.UUID = attrs.field(factory=uuid.uuid4)

    @property
    def ends_at(self) -> datetime | None:
        """The first instant at which the key is no longer valid, if any."""
        ends = [t for t in (self.revoked_at, self.expires_at) if t is not None]
        return min(ends) if ends else None

    def valid_at(self, at: datetime) -> bool:
        # Spelled out rather than via ends_at: this runs for every key of every verification.
        return (
            self.added_at <= at
            and (self.revoked_at is None or at < self.revoked_at)
            and (self.expires_at is None or at < self.expires_at)
        )

    def is_revoked_at(self, at: datetime) -> bool:
        return self.revoked_at is not None and self.revoked_at <= at

    @property
    def compromised(self) -> bool:
        return is_compromise(self.revoke_reason)

    def revoke(self, at: datetime, reason: str | RevocationReason) -> KeyHistoryEntry:
        """This entry after a revocation request: the earliest time and the strongest reason
        (a request never postpones or weakens an existing revocation; see
        stellakeys.revocation). Returns ``self`` unchanged when the request adds nothing.
        UnknownRevocationReasonError for a reason outside the vocabulary."""
        when, merged = merge_revocation(self.revoked_at, self.revoke_reason, at, reason)
        if when == self.revoked_at and merged.value == self.revoke_reason:
            return self
        return attrs.evolve(self, revoked_at=when, revoke_reason=merged.value)

    def _repr_html_(self) -> str | None:
        # Jupyter display, rendered by stellakeys.notebook once imported (stellakeys._display).
        return render_html(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keyid": self.key_id,
            "algorithm": self.algorithm,
            "fingerprint": self.fingerprint,
            "addedAt": format_time(self.added_at),
        }
        if self.revoked_at is not None:
            out["revokedAt"] = format_time(self.revoked_at)
            out["revokeReason"] = self.revoke_reason
        if self.expires_at is not None:
            out["expiresAt"] = format_time(self.expires_at)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


@attrs.frozen
class TrustAnchor:
    """The runbook's trust anchor. ``allowedKeyids`` and ``revokedKeys`` are views of the key
    history at a time, not separate lists, so they can never disagree with it."""

    anchor_id: uuid.UUID
    purl_pattern: str
    allowed_predicate_types: tuple[str, ...]
    policy_version: str
    created_at: datetime
    key_history: tuple[KeyHistoryEntry, ...] = ()
    active: bool = True

    def entry(self, key_id: str) -> KeyHistoryEntry | None:
        for e in self.key_history:
            if e.key_id == key_id:
                return e
        return None

    def allowed_keyids(self, at: datetime) -> tuple[str, ...]:
        """Keys not revoked as of ``at`` (including ones whose revocation is still scheduled)."""
        return tuple(e.key_id for e in self.key_history if not e.is_revoked_at(at))

    def revoked_keys(self, at: datetime) -> tuple[str, ...]:
        return tuple(e.key_id for e in self.key_history if e.is_revoked_at(at))

    def keys_valid_at(self, at: datetime) -> tuple[KeyHistoryEntry, ...]:
        return tuple(e for e in self.key_history if e.valid_at(at))

    def allows_predicate(self, predicate_type: str) -> bool:
        # Empty means none allowed, not all (DESIGN.md): an anchor must name what it vouches for.
        return predicate_type in self.allowed_predicate_types

    def _repr_html_(self) -> str | None:
        # Jupyter display with the key history, rendered by stellakeys.notebook once imported.
        return render_html(self)

    def to_dict(self, at: datetime) -> dict[str, Any]:
        return {
            "trustAnchorId": str(self.anchor_id),
            "purlPattern": self.purl_pattern,
            "allowedKeyids": list(self.allowed_keyids(at)),
            "allowedPredicateTypes": list(self.allowed_predicate_types),
            "policyVersion": self.policy_version,
            "revokedKeys": list(self.revoked_keys(at)),
            "keyHistory": [e.to_dict() for e in self.key_history],
            "active": self.active,
            "createdAt": format_time(self.created_at),
        }

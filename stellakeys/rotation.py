"""Rotation warnings: key age against each profile's policy, and deprecated algorithms. Pure."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

import attrs

from stellakeys.keys import KeyRecord
from stellakeys.profiles import SignerConfig

__all__ = ["RotationStatus", "RotationWarning", "months_between", "rotation_warnings"]


class RotationStatus(enum.StrEnum):
    OK = "ok"
    DUE_SOON = "due-soon"
    OVERDUE = "overdue"
    DEPRECATED = "deprecated-algorithm"


def months_between(start: datetime, end: datetime) -> int:
    """Whole calendar months from ``start`` to ``end`` (0 if ``end`` is earlier)."""
    months = (end.year - start.year) * 12 + (end.month - start.month)
    if (end.day, end.time()) < (start.day, start.time()):
        months -= 1
    return max(0, months)


@attrs.frozen
class RotationWarning:
    key_id: str
    profile: str
    algorithm: str
    age_months: int
    max_age_months: int
    warning_months: int
    status: RotationStatus

    @property
    def message(self) -> str:
        if self.status is RotationStatus.DEPRECATED:
            return f"⚠️ Algorithm {self.algorithm} is deprecated: rotate"
        if self.status is RotationStatus.OVERDUE:
            over = self.age_months - self.max_age_months
            return f"✗ Rotation overdue by {over} month{'s' if over != 1 else ''}"
        if self.status is RotationStatus.DUE_SOON:
            due = self.max_age_months - self.age_months
            return f"⚠️ Rotation due in {due} month{'s' if due != 1 else ''}"
        return "✓ OK"

    def to_dict(self) -> dict[str, object]:
        return {
            "keyId": self.key_id,
            "profile": self.profile,
            "algorithm": self.algorithm,
            "ageMonths": self.age_months,
            "maxAgeMonths": self.max_age_months,
            "warningMonths": self.warning_months,
            "status": self.status.value,
            "message": self.message,
        }


def rotation_warnings(
    keys: Iterable[KeyRecord], config: SignerConfig, now: datetime
) -> list[RotationWarning]:
    """One row per key that belongs to a profile with rotation enabled (imported keys without a
    profile have no policy and are left out). The caller filters out keys no longer in use."""
    rows: list[RotationWarning] = []
    for key in keys:
        profile = config.profiles.get(key.profile) if key.profile is not None else None
        if profile is None or not profile.rotation.enabled:
            continue
        policy = profile.rotation
        age = months_between(key.created_at, now)
        if key.algorithm in config.deprecated_algorithms:
            status = RotationStatus.DEPRECATED
        elif age >= policy.max_age_months:
            status = RotationStatus.OVERDUE
        elif age >= policy.max_age_months - policy.warning_months:
            status = RotationStatus.DUE_SOON
        else:
            status = RotationStatus.OK
        rows.append(
            RotationWarning(
                key.key_id,
                profile.name,
                key.algorithm,
                age,
                policy.max_age_months,
                policy.warning_months,
                status,
            )
        )
    return rows

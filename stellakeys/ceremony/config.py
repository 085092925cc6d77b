"""The ``ceremonies:`` section of the signer configuration (the runbook's signer-config.yaml).

.. code-block:: yaml

    ceremonies:
      enabled: true              # protected operations need an executed ceremony
      defaultTimeout: 24h
      maxTimeout: 168h           # 7 days
      requireSignedApprovals: true
      allowSelfApproval: false   # may the initiator approve their own ceremony?
      approvers: approvers.yaml  # file with approverGroups/approvers (relative to the home)
      thresholds:
        key-rotation: {minimum: 2, default: 2, maximum: 5, requiredApprovers: 3,
                       roles: [key-custodians]}   # optional: approver groups allowed

Every field is optional. Thresholds not given keep the runbook's defaults (2-of-3 for
key-rotation, key-revocation and trust-anchor-update, 2-of-4 for hsm-key-generation, 3-of-5 for
recovery-key-activation); a type given in part keeps the defaults of the fields it omits. "M-of-N"
means a default threshold of M and N ``requiredApprovers``: the ceremony needs at least N
eligible approvers, of whom M must approve.

This section is the *process's* policy. The store records its own (decision 0015) and the
stricter of the two applies: ``enabled: false`` (or no section at all) cannot switch off dual
control on a store whose recorded policy protects an operation. Without either, protected
operations run directly; ceremonies can still be created and executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from stellakeys.ceremony.model import (
    CEREMONY_TYPES,
    HSM_KEY_GENERATION,
    KEY_REVOCATION,
    KEY_ROTATION,
    POLICY_UPDATE,
    RECOVERY_KEY_ACTIVATION,
    TRUST_ANCHOR_UPDATE,
)
from stellakeys.errors import ConfigError, MalformedTimeError
from stellakeys.times import parse_duration

__all__ = ["DEFAULT_THRESHOLDS", "CeremonyConfig", "ThresholdPolicy"]


@attrs.frozen
class ThresholdPolicy:
    """Bounds on the threshold M of one ceremony type, and its default M-of-N."""

    minimum: int
    default: int
    maximum: int
    required_approvers: int
    #: Approver groups whose members may approve (None: any group listing the type).
    roles: tuple[str, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if not 2 <= self.minimum <= self.default <= self.maximum:
            raise ConfigError(
                "thresholds need 2 <= minimum <= default <= maximum"
                f" (got {self.minimum}, {self.default}, {self.maximum})"
            )
        if self.required_approvers < self.default:
            raise ConfigError(
                f"requiredApprovers ({self.required_approvers}) must be at least the default"
                f" threshold ({self.default})"
            )

    def to_dict(self) -> dict[str, int]:
        return {
            "minimum": self.minimum,
            "default": self.default,
            "maximum": self.maximum,
            "requiredApprovers": self.required_approvers,
        }


#: The runbook's "When Ceremonies Are Required" table; maxima from its configuration example.
DEFAULT_THRESHOLDS: Mapping[str, ThresholdPolicy] = {
    KEY_ROTATION: ThresholdPolicy(2, 2, 5, 3),
    TRUST_ANCHOR_UPDATE: ThresholdPolicy(2, 2, 4, 3),
    KEY_REVOCATION: ThresholdPolicy(2, 2, 5, 3),
    HSM_KEY_GENERATION: ThresholdPolicy(2, 2, 4, 4),
    RECOVERY_KEY_ACTIVATION: ThresholdPolicy(3, 3, 5, 5),
    POLICY_UPDATE: ThresholdPolicy(2, 2, 5, 3),
}


def _duration(raw: object, where: str) -> timedelta:
    if not isinstance(raw, str):
        raise ConfigError(f"{where} must be a duration like 24h")
    try:
        value = parse_duration(raw)
    except MalformedTimeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if value <= timedelta(0):
        raise ConfigError(f"{where} must be positive")
    return value


def _bool(raw: object, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where} must be true or false")
    return raw


def _int(raw: object, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(f"{where} must be an integer")
    return raw


@attrs.frozen
class CeremonyConfig:
    enabled: bool = False
    default_timeout: timedelta = timedelta(hours=24)
    max_timeout: timedelta = timedelta(hours=168)
    require_signed_approvals: bool = True
    allow_self_approval: bool = False
    thresholds: Mapping[str, ThresholdPolicy] = attrs.field(
        factory=lambda: dict(DEFAULT_THRESHOLDS)
    )
    #: Where approver groups and keys live (None: ``<home>/approvers.yaml`` if it exists).
    approvers_path: Path | None = None

    def __attrs_post_init__(self) -> None:
        if self.default_timeout > self.max_timeout:
            raise ConfigError("ceremonies.defaultTimeout must not exceed maxTimeout")

    def policy(self, ceremony_type: str) -> ThresholdPolicy:
        try:
            return self.thresholds[ceremony_type]
        except KeyError:
            known = ", ".join(CEREMONY_TYPES)
            raise ConfigError(f"unknown ceremony type {ceremony_type!r}; known: {known}") from None

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None, home: Path) -> CeremonyConfig:
        """Parse the ``ceremonies`` section of a configuration document (absent: defaults,
        disabled)."""
        section = (document or {}).get("ceremonies")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError("ceremonies must be a mapping")
        known = {
            "enabled",
            "defaultTimeout",
            "maxTimeout",
            "requireSignedApprovals",
            "allowSelfApproval",
            "thresholds",
            "approvers",
        }
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"ceremonies: unknown field(s) {', '.join(map(str, unknown))}")
        thresholds = dict(DEFAULT_THRESHOLDS)
        raw_thresholds = section.get("thresholds") or {}
        if not isinstance(raw_thresholds, Mapping):
            raise ConfigError("ceremonies.thresholds must be a mapping of type to bounds")
        for name, raw in raw_thresholds.items():
            where = f"ceremonies.thresholds.{name}"
            if name not in DEFAULT_THRESHOLDS:
                raise ConfigError(
                    f"{where}: unknown ceremony type; known: {', '.join(CEREMONY_TYPES)}"
                )
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{where} must be a mapping")
            extra = sorted(
                set(raw) - {"minimum", "default", "maximum", "requiredApprovers", "roles"}
            )
            if extra:
                raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, extra))}")
            base = DEFAULT_THRESHOLDS[name]
            default = _int(raw.get("default", base.default), f"{where}.default")
            minimum = _int(raw.get("minimum", min(base.minimum, default)), f"{where}.minimum")
            maximum = _int(raw.get("maximum", max(base.maximum, default)), f"{where}.maximum")
            required = _int(
                raw.get("requiredApprovers", max(base.required_approvers, default)),
                f"{where}.requiredApprovers",
            )
            roles_raw = raw.get("roles")
            if roles_raw is not None and (
                not isinstance(roles_raw, list) or not all(isinstance(r, str) for r in roles_raw)
            ):
                raise ConfigError(f"{where}.roles must be a list of approver group names")
            roles = None if roles_raw is None else tuple(dict.fromkeys(roles_raw))
            try:
                thresholds[name] = ThresholdPolicy(minimum, default, maximum, required, roles)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        approvers = section.get("approvers")
        if approvers is not None and not isinstance(approvers, str):
            raise ConfigError("ceremonies.approvers must be a file path")
        path = None
        if approvers:
            path = Path(approvers).expanduser()
            if not path.is_absolute():
                path = home / path
        return cls(
            enabled=_bool(section.get("enabled", False), "ceremonies.enabled"),
            default_timeout=_duration(
                section.get("defaultTimeout", "24h"), "ceremonies.defaultTimeout"
            ),
            max_timeout=_duration(section.get("maxTimeout", "168h"), "ceremonies.maxTimeout"),
            require_signed_approvals=_bool(
                section.get("requireSignedApprovals", True), "ceremonies.requireSignedApprovals"
            ),
            allow_self_approval=_bool(
                section.get("allowSelfApproval", False), "ceremonies.allowSelfApproval"
            ),
            thresholds=thresholds,
            approvers_path=path,
        )

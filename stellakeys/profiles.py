"""Key profiles: the runbook's ``signer.yaml`` (algorithm, key store, rotation policy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from stellakeys.crypto import canonical_id
from stellakeys.errors import ConfigError, StellaKeysError

__all__ = ["DEFAULT_PROFILES", "KeyProfile", "RotationPolicy", "SignerConfig"]


@attrs.frozen
class RotationPolicy:
    enabled: bool = True
    max_age_months: int = 12
    warning_months: int = 2

    def __attrs_post_init__(self) -> None:
        if self.max_age_months < 1 or not 0 <= self.warning_months < self.max_age_months:
            raise ConfigError("rotation needs maxAgeMonths >= 1 and 0 <= warningMonths < max")


@attrs.frozen
class KeyProfile:
    """A named recipe for keys: which algorithm (canonical id) and which key store."""

    name: str
    algorithm: str = attrs.field()
    key_store: str = "software://default"
    rotation: RotationPolicy = attrs.field(factory=RotationPolicy)

    @algorithm.validator
    def _known(self, _: object, value: str) -> None:
        # By name only: the backend (GOST and SM2 load libcrypto) is imported when a key is
        # made or read, not when the defaults below are built (issue 20: CLI start-up).
        canonical_id(value)

    def __attrs_post_init__(self) -> None:
        # Store the canonical id, whatever alias the YAML used.
        object.__setattr__(self, "algorithm", canonical_id(self.algorithm))

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "keyStore": self.key_store,
            "rotation": {
                "enabled": self.rotation.enabled,
                "maxAgeMonths": self.rotation.max_age_months,
                "warningMonths": self.rotation.warning_months,
            },
        }


def _profile_from_dict(name: str, raw: object, default_warning: int | None) -> KeyProfile:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"signer.profiles.{name} must be a mapping")
    algorithm = raw.get("algorithm")
    if not isinstance(algorithm, str):
        raise ConfigError(f"signer.profiles.{name}.algorithm is required")
    key_store = raw.get("keyStore", "software://default")
    if not isinstance(key_store, str):
        raise ConfigError(f"signer.profiles.{name}.keyStore must be a URI like software://default")
    from stellakeys.keystores.uris import check_key_store_uri

    try:
        # The same parser open_key_store uses (RFC 7512 pkcs11:, KMS ARNs, alias/ names).
        key_store = check_key_store_uri(key_store)
    except StellaKeysError as exc:
        raise ConfigError(f"signer.profiles.{name}.keyStore: {exc}") from None
    rot = raw.get("rotation", {}) or {}
    if not isinstance(rot, Mapping):
        raise ConfigError(f"signer.profiles.{name}.rotation must be a mapping")
    try:
        rotation = RotationPolicy(
            enabled=bool(rot.get("enabled", True)),
            max_age_months=int(rot.get("maxAgeMonths", 12)),
            warning_months=int(
                rot.get("warningMonths", default_warning if default_warning is not None else 2)
            ),
        )
        return KeyProfile(name, algorithm, key_store, rotation)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, StellaKeysError):
            raise ConfigError(f"signer.profiles.{name}: {exc}") from None
        raise ConfigError(f"signer.profiles.{name}: {exc}") from None


@attrs.frozen
class SignerConfig:
    profiles: Mapping[str, KeyProfile]
    #: Algorithms still accepted for verification but flagged by rotation warnings.
    deprecated_algorithms: frozenset[str] = frozenset()

    def profile(self, name: str) -> KeyProfile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"unknown profile {name!r}; configured: {known}") from None

    @classmethod
    def from_dict(cls, document: object) -> SignerConfig:
        """Parse the runbook's ``signer.yaml`` shape: ``signer: {profiles: ..., rotation: ...}``."""
        if document is None:
            return cls(DEFAULT_PROFILES)
        if not isinstance(document, Mapping) or not isinstance(document.get("signer"), Mapping):
            raise ConfigError("signer.yaml must have a top-level 'signer' mapping")
        signer = document["signer"]
        rotation = signer.get("rotation") or {}
        default_warning = rotation.get("warningMonths") if isinstance(rotation, Mapping) else None
        raw_profiles = signer.get("profiles", {}) or {}
        if not isinstance(raw_profiles, Mapping):
            raise ConfigError("signer.profiles must be a mapping of name to profile")
        profiles = {
            str(n): _profile_from_dict(str(n), p, default_warning) for n, p in raw_profiles.items()
        }
        deprecated = signer.get("deprecatedAlgorithms", []) or []
        if not isinstance(deprecated, list):
            raise ConfigError("signer.deprecatedAlgorithms must be a list")
        try:
            dep_ids = frozenset(canonical_id(str(a)) for a in deprecated)
        except StellaKeysError as exc:
            raise ConfigError(f"signer.deprecatedAlgorithms: {exc}") from None
        return cls(profiles or DEFAULT_PROFILES, dep_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"signer": {"profiles": {n: p.to_dict() for n, p in self.profiles.items()}}}


# The runbook's five profiles, on the embedded defaults: every key store is the software store
# until a deployment points a profile at KMS or an HSM in its own signer.yaml.
DEFAULT_PROFILES: Mapping[str, KeyProfile] = {
    "default": KeyProfile("default", "ed25519"),
    "fips": KeyProfile("fips", "ecdsa-p256-sha256"),
    "gost": KeyProfile("gost", "gost-r-34.10-2012-256"),
    "sm2": KeyProfile("sm2", "sm2-sm3"),
    "pqc": KeyProfile("pqc", "ml-dsa-65"),
}

"""The dual-control policy of a store: which operations need a ceremony, with which rules.

Pure. The policy is a fact about the *store*, not about the process that happens to open it:
it is recorded there (versioned, append-only, each version with an audit event) and every
process reads it. A process's own configuration (``ceremonies:`` in signer.yaml) can only add
to it: the policy in force is ``store ⊔ config``, the stricter of the two on every field
(:meth:`CeremonyPolicy.stricter`). Weakening the stored policy takes an executed
``ceremony-policy-update`` ceremony, whose id the new version names; a weaker version that
names none (a row written straight into the database) is disregarded when the versions are
folded (:func:`fold_versions`) and reported by ``stellaops audit verify``.

See docs/decisions/0015-ceremony-insider.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.ceremony._canonical import canonical_json
from stellakeys.ceremony.model import CEREMONY_TYPES, POLICY_UPDATE, Ceremony, CeremonyState
from stellakeys.ceremony.protected import PROTECTED_OPERATIONS
from stellakeys.errors import PolicyError

if TYPE_CHECKING:
    from stellakeys.ceremony.config import CeremonyConfig

__all__ = [
    "EVENT_POLICY_RECORDED",
    "OperationRule",
    "CeremonyPolicy",
    "PolicyVersion",
    "fold_versions",
    "normalize_policy_payload",
]

#: Audit event written with every recorded version of the policy.
EVENT_POLICY_RECORDED = "signer.ceremony.policy_recorded"
#: Audit event for an approval left out of the count at execution (with the reason).
EVENT_APPROVAL_DISCOUNTED = "signer.ceremony.approval_discounted"
#: Audit event for an execution refused because too few approvals survived re-verification.
EVENT_EXECUTION_REFUSED = "signer.ceremony.execution_refused"

_MIN_THRESHOLD = 2


@attrs.frozen
class OperationRule:
    """What a ceremony of one type needs: at least ``minimum`` approvals (its threshold may
    not be set lower), from members of ``roles`` (approver group names; None: any group whose
    operations list the type)."""

    minimum: int = _MIN_THRESHOLD
    roles: tuple[str, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.minimum, bool) or not isinstance(self.minimum, int):
            raise PolicyError("a policy minimum must be an integer")
        if self.minimum < _MIN_THRESHOLD:
            raise PolicyError(f"a policy minimum is at least {_MIN_THRESHOLD}")

    def allows_group(self, group: str) -> bool:
        return self.roles is None or group in self.roles

    def stricter(self, other: OperationRule) -> OperationRule:
        if self.roles is None:
            roles = other.roles
        elif other.roles is None:
            roles = self.roles
        else:
            roles = tuple(r for r in self.roles if r in other.roles)
        return OperationRule(max(self.minimum, other.minimum), roles)

    def to_dict(self) -> dict[str, Any]:
        return {"minimum": self.minimum, "roles": None if self.roles is None else list(self.roles)}


@attrs.frozen
class CeremonyPolicy:
    #: Guard operations that run only as the execution of an approved ceremony.
    protected: frozenset[str] = frozenset()
    require_signed_approvals: bool = False
    allow_self_approval: bool = True
    rules: Mapping[str, OperationRule] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        unknown = sorted(self.protected - PROTECTED_OPERATIONS)
        if unknown:
            raise PolicyError(f"policy: unknown protected operation(s) {', '.join(unknown)}")
        unknown = sorted(set(self.rules) - set(CEREMONY_TYPES))
        if unknown:
            raise PolicyError(f"policy: unknown ceremony type(s) {', '.join(unknown)}")

    # --- queries ----------------------------------------------------------------------------

    def requires(self, operation: str) -> bool:
        return operation in self.protected

    def rule(self, ceremony_type: str) -> OperationRule:
        return self.rules.get(ceremony_type, OperationRule())

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def weakest(cls) -> CeremonyPolicy:
        """What applies when neither the store nor the configuration says anything."""
        return cls()

    @classmethod
    def from_config(cls, config: CeremonyConfig) -> CeremonyPolicy:
        return cls(
            protected=PROTECTED_OPERATIONS if config.enabled else frozenset(),
            require_signed_approvals=config.require_signed_approvals,
            allow_self_approval=config.allow_self_approval,
            rules={
                t: OperationRule(p.minimum, p.roles)
                for t, p in config.thresholds.items()
                if t in CEREMONY_TYPES
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "protectedOperations": sorted(self.protected),
            "requireSignedApprovals": self.require_signed_approvals,
            "allowSelfApproval": self.allow_self_approval,
            "rules": {t: self.rule(t).to_dict() for t in CEREMONY_TYPES},
        }

    @classmethod
    def from_dict(cls, raw: object) -> CeremonyPolicy:
        """Strict parse of :meth:`to_dict`'s shape (a ``ceremony-policy-update`` payload)."""
        if not isinstance(raw, Mapping):
            raise PolicyError("a ceremony policy must be a JSON object")
        fields = {"protectedOperations", "requireSignedApprovals", "allowSelfApproval", "rules"}
        extra = sorted(set(raw) - fields)
        if extra:
            raise PolicyError(f"policy: unknown field(s) {', '.join(map(str, extra))}")
        ops = raw.get("protectedOperations", [])
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise PolicyError("policy.protectedOperations must be a list of operation names")
        flags = {}
        for name, default in (("requireSignedApprovals", False), ("allowSelfApproval", True)):
            value = raw.get(name, default)
            if not isinstance(value, bool):
                raise PolicyError(f"policy.{name} must be true or false")
            flags[name] = value
        rules_raw = raw.get("rules", {})
        if not isinstance(rules_raw, Mapping):
            raise PolicyError("policy.rules must map ceremony types to rules")
        rules: dict[str, OperationRule] = {}
        for name, rule in rules_raw.items():
            if not isinstance(rule, Mapping) or set(rule) - {"minimum", "roles"}:
                raise PolicyError(f"policy.rules.{name} must have minimum and roles only")
            roles = rule.get("roles")
            if roles is not None and (
                not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)
            ):
                raise PolicyError(f"policy.rules.{name}.roles must be a list of group names")
            rules[str(name)] = OperationRule(
                rule.get("minimum", _MIN_THRESHOLD),
                None if roles is None else tuple(dict.fromkeys(roles)),
            )
        return cls(
            frozenset(ops), flags["requireSignedApprovals"], flags["allowSelfApproval"], rules
        )

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    # --- ordering ---------------------------------------------------------------------------

    def stricter(self, other: CeremonyPolicy) -> CeremonyPolicy:
        """The stricter of the two on every field (a least upper bound)."""
        return CeremonyPolicy(
            protected=self.protected | other.protected,
            require_signed_approvals=self.require_signed_approvals
            or other.require_signed_approvals,
            allow_self_approval=self.allow_self_approval and other.allow_self_approval,
            rules={
                t: self.rule(t).stricter(other.rule(t))
                for t in CEREMONY_TYPES
                if t in self.rules or t in other.rules
            },
        )

    def weakenings(self, than: CeremonyPolicy) -> list[str]:
        """How this policy is weaker than ``than`` (empty: it is at least as strict)."""
        out = [
            f"{op} would no longer need a ceremony"
            for op in sorted(than.protected - self.protected)
        ]
        if than.require_signed_approvals and not self.require_signed_approvals:
            out.append("unsigned approvals would count")
        if self.allow_self_approval and not than.allow_self_approval:
            out.append("initiators could approve their own ceremonies")
        for t in CEREMONY_TYPES:
            mine, theirs = self.rule(t), than.rule(t)
            if mine.minimum < theirs.minimum:
                out.append(f"{t} would need {mine.minimum} approvals instead of {theirs.minimum}")
            if theirs.roles is not None and (
                mine.roles is None or not set(mine.roles) <= set(theirs.roles)
            ):
                out.append(f"{t} could be approved by more approver groups")
        return out


@attrs.frozen
class PolicyVersion:
    """One recorded version of a store's policy (a row of ``ceremony_policy``)."""

    version: int
    policy_json: bytes
    recorded_at: datetime
    recorded_by: str
    #: The executed ``ceremony-policy-update`` ceremony that authorised a weakening.
    ceremony_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.version < 1:
            raise PolicyError("policy versions start at 1")
        if self.recorded_at.tzinfo is None:
            raise ValueError("recorded_at must be timezone-aware")

    @property
    def policy(self) -> CeremonyPolicy:
        return CeremonyPolicy.from_dict(json.loads(self.policy_json))


@attrs.frozen
class FoldedPolicy:
    """The store's policy in force, and the versions that were disregarded (with why)."""

    policy: CeremonyPolicy | None
    version: int
    disregarded: tuple[tuple[int, str], ...] = ()


def authorises(ceremony: Ceremony | None, policy: CeremonyPolicy) -> bool:
    """True when ``ceremony`` is an executed policy update whose payload is ``policy``."""
    return (
        ceremony is not None
        and ceremony.type == POLICY_UPDATE
        and ceremony.state is CeremonyState.EXECUTED
        and ceremony.payload.get("policy") == policy.to_dict()
    )


def fold_versions(
    versions: Sequence[PolicyVersion], ceremony: Callable[[str], Ceremony | None]
) -> FoldedPolicy:
    """The policy in force after ``versions`` (oldest first).

    A version at least as strict as the one in force replaces it. A weaker one replaces it
    only when it names an executed ``ceremony-policy-update`` ceremony for exactly that
    policy; otherwise it is disregarded (merged as ``stricter``, so whatever it *adds* still
    holds) and reported.
    """
    current: CeremonyPolicy | None = None
    version = 0
    disregarded: list[tuple[int, str]] = []
    for v in versions:
        try:
            new = v.policy
        except (PolicyError, ValueError) as exc:
            disregarded.append((v.version, f"unreadable policy: {exc}"))
            continue
        version = v.version
        if current is None or not new.weakenings(current):
            current = new
            continue
        if v.ceremony_id is not None and authorises(ceremony(v.ceremony_id), new):
            current = new
            continue
        disregarded.append(
            (v.version, "weakens the policy without an executed ceremony-policy-update")
        )
        current = current.stricter(new)
    return FoldedPolicy(current, version, tuple(disregarded))


def normalize_policy_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A ``ceremony-policy-update`` payload, ``{"policy": {...}}``, in canonical form."""
    extra = sorted(set(payload) - {"policy"})
    if extra:
        raise PolicyError(
            f"ceremony-policy-update payload: unknown field(s) {', '.join(map(str, extra))};"
            " allowed: policy"
        )
    if "policy" not in payload:
        raise PolicyError("ceremony-policy-update payload needs policy")
    return {"policy": CeremonyPolicy.from_dict(payload["policy"]).to_dict()}


def effective(
    stored: CeremonyPolicy | None, configured: Iterable[CeremonyPolicy]
) -> CeremonyPolicy:
    """The policy a process applies: the store's, made stricter by its own configuration."""
    out = stored or CeremonyPolicy.weakest()
    for extra in configured:
        out = out.stricter(extra)
    return out

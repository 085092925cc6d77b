"""Approvers: the runbook's ``approvers.yaml`` groups, plus each approver's registered keys.

.. code-block:: yaml

    approverGroups:                  # the runbook's shape, unchanged
      - name: key-custodians
        members: [security-lead@company.com, ciso@company.com]
        operations: [key-rotation, key-revocation]
    approvers:                       # stellakeys' addition: keys and scopes per member
      security-lead@company.com:
        scopes: [ceremony:approve, ceremony:cancel]
        keys:
          - keyId: user-signing-key-456
            algorithm: ecdsa-p256    # optional; checked against the key when given
            publicKey: |             # PEM SubjectPublicKeyInfo, any supported algorithm...
              -----BEGIN PUBLIC KEY-----
              ...
          - keyId: lead-hsm-key
            publicKeyFile: keys/lead-hsm.pem   # ...or a file, relative to this file
          - keyId: lost-laptop-key
            publicKey: ...
            revoked: true    # no longer verifies approvals, including ones already recorded

Scopes: a member listed without ``scopes`` holds ``ceremony:approve`` (being put in an approver
group is the grant); a ``scopes`` list, when present, is exactly what the member holds, so a
member can be kept in a group but suspended with ``scopes: []``.

A running service re-reads this file when it changes (:class:`ApproverFile`): removing an
approver, a group membership or a key takes effect at the next decision, and execution
re-checks every recorded approval against the file as it is then (decision 0015).

One public key may be registered for one approver only: two approvers sharing a key would be
one person as far as the signatures can tell, and dual control would be void.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from stellakeys.ceremony.actor import KNOWN_SCOPES, SCOPE_APPROVE, Actor, check_identity
from stellakeys.ceremony.model import CEREMONY_TYPES
from stellakeys.config import load_yaml
from stellakeys.crypto import PublicKey, get_algorithm, load_public_key_pem
from stellakeys.errors import ConfigError, PolicyError, StellaKeysError

__all__ = [
    "ApproverFile",
    "ApproverGroup",
    "ApproverKey",
    "ApproverRegistry",
    "RegisteredApprover",
]


@attrs.frozen
class ApproverKey:
    key_id: str
    algorithm: str
    fingerprint: str
    public_key_pem: str
    #: A revoked key verifies nothing, not even approvals recorded before it was revoked.
    revoked: bool = False

    def public_key(self) -> PublicKey:
        return load_public_key_pem(self.public_key_pem)

    def to_dict(self) -> dict[str, str]:
        return {
            "keyId": self.key_id,
            "algorithm": self.algorithm,
            "fingerprint": self.fingerprint,
            "publicKey": self.public_key_pem,
        }


@attrs.frozen
class ApproverGroup:
    name: str
    members: tuple[str, ...]
    operations: tuple[str, ...]


@attrs.frozen
class RegisteredApprover:
    identity: str
    scopes: frozenset[str]
    keys: tuple[ApproverKey, ...] = ()


@attrs.frozen
class ApproverRegistry:
    groups: tuple[ApproverGroup, ...] = ()
    approvers: Mapping[str, RegisteredApprover] = attrs.field(factory=dict)
    #: Where the registry was read from, for messages (None: built in code or empty).
    source: Path | None = None

    # --- queries ----------------------------------------------------------------------------

    def groups_of(self, identity: str) -> tuple[ApproverGroup, ...]:
        return tuple(g for g in self.groups if identity in g.members)

    def is_eligible(self, identity: str, ceremony_type: str) -> bool:
        """In a group whose operations include ``ceremony_type``."""
        return any(ceremony_type in g.operations for g in self.groups_of(identity))

    def eligible_for(self, ceremony_type: str) -> tuple[str, ...]:
        """Members of the groups allowed for the type, in file order, each once."""
        found: dict[str, None] = {}
        for group in self.groups:
            if ceremony_type in group.operations:
                found.update(dict.fromkeys(group.members))
        return tuple(found)

    def members_of_group(self, name: str) -> tuple[str, ...]:
        for group in self.groups:
            if group.name == name:
                return group.members
        return ()

    def keys_of(self, identity: str) -> tuple[ApproverKey, ...]:
        """The approver's keys that are not revoked."""
        entry = self.approvers.get(identity)
        return tuple(k for k in entry.keys if not k.revoked) if entry is not None else ()

    def keyring_of(self, identity: str) -> dict[str, PublicKey]:
        """keyId -> public key of the approver's unrevoked keys, for DSSE verification of
        that approver's statements."""
        return {k.key_id: k.public_key() for k in self.keys_of(identity)}

    def scopes_of(self, identity: str) -> frozenset[str]:
        entry = self.approvers.get(identity)
        if entry is not None:
            return entry.scopes
        return frozenset({SCOPE_APPROVE}) if self.groups_of(identity) else frozenset()

    def actor(self, identity: str) -> Actor:
        """The actor the CLI acts as: the identity with the scopes this file gives it."""
        return Actor(identity, self.scopes_of(identity))

    def identities(self) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for group in self.groups:
            found.update(dict.fromkeys(group.members))
        found.update(dict.fromkeys(self.approvers))
        return tuple(found)

    def find_key(self, key_id: str) -> tuple[str, ApproverKey] | None:
        for identity, entry in self.approvers.items():
            for key in entry.keys:
                if key.key_id == key_id:
                    return identity, key
        return None

    def find_fingerprint(self, fingerprint: str) -> tuple[str, ApproverKey] | None:
        for identity, entry in self.approvers.items():
            for key in entry.keys:
                if key.fingerprint == fingerprint:
                    return identity, key
        return None

    # --- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> ApproverRegistry:
        return cls._from_document(load_yaml(path), path)

    @classmethod
    def _from_document(cls, document: Any, path: Path) -> ApproverRegistry:
        from stellakeys.config_schema import validate_config

        validate_config(document, path, "approvers")
        if document is None:
            return cls(source=path)
        assert isinstance(document, Mapping)
        try:
            return cls.from_dict(document, base_dir=path.parent, source=path)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(
        cls,
        document: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        source: Path | None = None,
    ) -> ApproverRegistry:
        unknown = sorted(set(document) - {"approverGroups", "approvers"})
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(map(str, unknown))}")
        groups = _groups(document.get("approverGroups") or [])
        raw = document.get("approvers") or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("approvers must be a mapping of identity to keys and scopes")
        approvers = {
            _identity(name, "approvers"): _approver(str(name), entry, base_dir)
            for name, entry in raw.items()
        }
        seen: dict[str, str] = {}
        key_ids: dict[str, str] = {}
        for identity, entry in approvers.items():
            for key in entry.keys:
                other = seen.setdefault(key.fingerprint, identity)
                if other != identity:
                    raise ConfigError(
                        f"the key {key.fingerprint} is registered for both {other} and"
                        f" {identity}: each approver needs a key of their own"
                    )
                owner = key_ids.setdefault(key.key_id, identity)
                if owner != identity or sum(k.key_id == key.key_id for k in entry.keys) > 1:
                    raise ConfigError(f"keyId {key.key_id!r} is registered more than once")
        return cls(groups, approvers, source)


def _identity(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: identities must be strings")
    try:
        return check_identity(value)
    except PolicyError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _str_list(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{where} must be a list")
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(dict.fromkeys(value))


def _groups(raw: object) -> tuple[ApproverGroup, ...]:
    if not isinstance(raw, list):
        raise ConfigError("approverGroups must be a list")
    groups: list[ApproverGroup] = []
    for i, entry in enumerate(raw):
        where = f"approverGroups[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where} needs a name")
        extra = sorted(set(entry) - {"name", "members", "operations"})
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, extra))}")
        members = tuple(
            _identity(m, f"{where}.members")
            for m in _str_list(entry.get("members") or [], f"{where}.members")
        )
        operations = _str_list(entry.get("operations") or [], f"{where}.operations")
        for op in operations:
            if op not in CEREMONY_TYPES:
                raise ConfigError(
                    f"{where}.operations: unknown ceremony type {op!r};"
                    f" known: {', '.join(CEREMONY_TYPES)}"
                )
        if any(g.name == entry["name"] for g in groups):
            raise ConfigError(f"{where}: duplicate group name {entry['name']!r}")
        groups.append(ApproverGroup(entry["name"], members, operations))
    return tuple(groups)


def _approver(identity: str, raw: object, base_dir: Path | None) -> RegisteredApprover:
    where = f"approvers.{identity}"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with keys and scopes")
    extra = sorted(set(raw) - {"keys", "scopes"})
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, extra))}")
    if "scopes" in raw:
        scopes = frozenset(_str_list(raw["scopes"] or [], f"{where}.scopes"))
        bad = sorted(scopes - KNOWN_SCOPES)
        if bad:
            raise ConfigError(
                f"{where}.scopes: unknown scope(s) {', '.join(bad)};"
                f" known: {', '.join(sorted(KNOWN_SCOPES))}"
            )
    else:
        scopes = frozenset({SCOPE_APPROVE})
    raw_keys = raw.get("keys") or []
    if not isinstance(raw_keys, list):
        raise ConfigError(f"{where}.keys must be a list")
    keys = tuple(_key(k, f"{where}.keys[{i}]", base_dir) for i, k in enumerate(raw_keys))
    return RegisteredApprover(identity, scopes, keys)


def _key(raw: object, where: str, base_dir: Path | None) -> ApproverKey:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    extra = sorted(set(raw) - {"keyId", "algorithm", "publicKey", "publicKeyFile", "revoked"})
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, extra))}")
    key_id = raw.get("keyId")
    if not isinstance(key_id, str) or not key_id.strip():
        raise ConfigError(f"{where}.keyId is required")
    pem = raw.get("publicKey")
    file = raw.get("publicKeyFile")
    if (pem is None) == (file is None):
        raise ConfigError(f"{where} needs exactly one of publicKey and publicKeyFile")
    if file is not None:
        if not isinstance(file, str):
            raise ConfigError(f"{where}.publicKeyFile must be a path")
        path = Path(file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}.publicKeyFile: cannot read {path}: {exc}") from None
    if not isinstance(pem, str):
        raise ConfigError(f"{where}.publicKey must be a PEM string")
    try:
        public = load_public_key_pem(pem)
    except StellaKeysError as exc:
        raise ConfigError(f"{where}.publicKey: {exc}") from None
    algorithm = raw.get("algorithm")
    if algorithm is not None:
        try:
            declared = get_algorithm(str(algorithm)).id
        except StellaKeysError as exc:
            raise ConfigError(f"{where}.algorithm: {exc}") from None
        if declared != public.algorithm.id:
            raise ConfigError(
                f"{where}: algorithm says {declared} but the key is {public.algorithm.id}"
            )
    revoked = raw.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ConfigError(f"{where}.revoked must be true or false")
    return ApproverKey(key_id, public.algorithm.id, public.fingerprint, public.to_pem(), revoked)


class ApproverFile:
    """``approvers.yaml`` as it is *now*: :meth:`get` reads the file on every call and parses
    it again when its modification time, size or SHA-256 changed, so a long-lived service
    never acts on a removed approver (nothing is cached for the life of the process).

    A file that does not exist gives an empty registry (nobody may approve)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, str] | None = None
        self._registry = ApproverRegistry(source=path)

    def get(self) -> ApproverRegistry:
        import yaml

        try:
            stat = self.path.stat()
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ApproverRegistry(source=self.path)
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size, hashlib.sha256(data).hexdigest())
        with self._lock:
            if stamp == self._stamp:
                return self._registry
        try:
            document = yaml.safe_load(data.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raise ConfigError(f"{self.path}: invalid YAML") from None
        registry = ApproverRegistry._from_document(document, self.path)
        with self._lock:
            self._stamp, self._registry = stamp, registry
        return registry

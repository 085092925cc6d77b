"""What each ceremony type does: its payload, the facade call that executes it, its result.

A payload is validated and *normalised* when the ceremony is created (profile resolved from
the algorithm, times in canonical form, a new anchor's id chosen), so approvers sign exactly
what will run, and execution needs no judgement of its own. Unknown payload fields are refused
for the same reason.

============================ ========================================== =======================
type                         payload                                    facade call (guard op)
============================ ========================================== =======================
key-rotation                 keyId, [algorithm], [profile], [anchorIds],  ``rotate_key``
                             [replacesKeyId], [revokeReplacedAt],       (key-rotation)
                             [revokeReason]
hsm-key-generation           keyId, [algorithm], [profile] (an HSM one) ``generate_key``
                                                                        (hsm-key-generation)
key-revocation               keyId, anchorId (UUID or ALL), reason,     ``revoke_key``
                             [effectiveAt]                              (key-revocation)
trust-anchor-update          action: create | add-key | deactivate,     ``create_anchor`` /
                             and that action's fields                   ``add_key`` /
                                                                        ``deactivate_anchor``
                                                                        (trust-anchor-update)
recovery-key-activation      keyId (a pre-registered key), [anchorId]   ``add_key``
                             (default ALL)                              (trust-anchor-update)
============================ ========================================== =======================
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.ceremony._canonical import canonical_json, check_canonical_value
from stellakeys.ceremony.model import (
    HSM_KEY_GENERATION,
    KEY_REVOCATION,
    KEY_ROTATION,
    POLICY_UPDATE,
    RECOVERY_KEY_ACTIVATION,
    TRUST_ANCHOR_UPDATE,
    Ceremony,
)
from stellakeys.ceremony.protected import (
    CEREMONY_FOR_OPERATION,
    OP_HSM_KEY_GENERATION,
    OP_KEY_GENERATION,
    OP_KEY_REVOCATION,
    OP_KEY_ROTATION,
    OP_TRUST_ANCHOR_UPDATE,
    PROTECTED_OPERATIONS,
)
from stellakeys.crypto import get_algorithm
from stellakeys.errors import (
    MalformedPurlError,
    MalformedTimeError,
    NotFoundError,
    PolicyError,
    StellaKeysError,
)
from stellakeys.limits import (
    MAX_PAYLOAD_BYTES,
    MAX_POLICY_VERSION,
    MAX_PURL_PATTERN,
    MAX_REASON,
    check_key_id,
    check_list_size,
    check_predicate_types,
    check_text,
)
from stellakeys.times import format_time, parse_time

if TYPE_CHECKING:
    from stellakeys.ceremony.ports import Authorization, ProtectedOperations
    from stellakeys.profiles import KeyProfile
    from stellakeys.storage.ports import Transaction

# The operation names are re-exported from stellakeys.ceremony.protected, where they live so
# that the policy and the storage ports need not import this module (no import cycle).
__all__ = [
    "ALL",
    "CEREMONY_FOR_OPERATION",
    "OP_HSM_KEY_GENERATION",
    "OP_KEY_GENERATION",
    "OP_KEY_REVOCATION",
    "OP_KEY_ROTATION",
    "OP_TRUST_ANCHOR_UPDATE",
    "PROTECTED_OPERATIONS",
    "Plan",
    "normalize_payload",
    "plan_for",
    "result_for",
]

ALL = "ALL"


@attrs.frozen
class Plan:
    """The one facade call a ceremony executes: the operation name it gives its authorizer,
    the details that must equal the payload's, and the call itself (given the authorization
    to pass on)."""

    operation: str
    expected: Mapping[str, Any]
    run: Callable[[ProtectedOperations, Authorization], object]


# --- payload validation -------------------------------------------------------------------


class _Fields:
    """Typed access to a payload with a fixed set of allowed fields."""

    def __init__(
        self, ceremony_type: str, payload: Mapping[str, Any], allowed: Sequence[str]
    ) -> None:
        self.type = ceremony_type
        self.payload = payload
        unknown = sorted(set(payload) - set(allowed))
        if unknown:
            raise PolicyError(
                f"{ceremony_type} payload: unknown field(s) {', '.join(unknown)};"
                f" allowed: {', '.join(allowed)}"
            )

    def text(self, name: str, *, required: bool = True, maximum: int = 100) -> str | None:
        """A non-empty printable string of at most ``maximum`` characters (stellakeys.limits:
        the same checks the facade applies when the ceremony executes)."""
        value = self.payload.get(name)
        if value is None:
            if required:
                raise PolicyError(f"{self.type} payload needs {name}")
            return None
        if not isinstance(value, str) or not value.strip():
            raise PolicyError(f"{self.type} payload: {name} must be a non-empty string")
        try:
            return check_text(value, name, maximum)
        except PolicyError as exc:
            raise PolicyError(f"{self.type} payload: {exc}") from None

    def key_id(self, name: str, *, required: bool = True) -> str | None:
        value = self.payload.get(name)
        if value is None and not required:
            return None
        if value is None:
            raise PolicyError(f"{self.type} payload needs {name}")
        try:
            return check_key_id(value)
        except PolicyError as exc:
            raise PolicyError(f"{self.type} payload: {name}: {exc}") from None

    def req(self, name: str, *, maximum: int = 100) -> str:
        value = self.text(name, maximum=maximum)
        assert value is not None
        return value

    def str_list(self, name: str) -> list[str]:
        value = self.payload.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise PolicyError(f"{self.type} payload: {name} must be a list of strings")
        try:
            check_list_size(value, name)
            for item in value:
                check_text(item, f"an item of {name}", MAX_PURL_PATTERN)
        except PolicyError as exc:
            raise PolicyError(f"{self.type} payload: {exc}") from None
        return list(dict.fromkeys(value))

    def time(self, name: str) -> str | None:
        value = self.text(name, required=False)
        if value is None:
            return None
        try:
            return format_time(parse_time(value))
        except MalformedTimeError as exc:
            raise PolicyError(f"{self.type} payload: {name}: {exc}") from None


def _anchor_ref(value: str, where: str, *, allow_all: bool) -> str:
    if allow_all and value == ALL:
        return ALL
    try:
        return str(uuid.UUID(value))
    except ValueError:
        extra = " or ALL" if allow_all else ""
        raise PolicyError(f"{where}: {value!r} is not an anchor UUID{extra}") from None


def _is_hsm(profile: KeyProfile) -> bool:
    return profile.key_store.startswith(("hsm:", "pkcs11:"))


def _resolve_profile(
    manager: ProtectedOperations, f: _Fields, *, hsm_only: bool
) -> tuple[KeyProfile, str]:
    name = f.text("profile", required=False)
    algorithm = f.text("algorithm", required=False)
    alg_id = None
    if algorithm is not None:
        try:
            alg_id = get_algorithm(algorithm).id
        except StellaKeysError as exc:
            raise PolicyError(f"{f.type} payload: {exc}") from None
    if name is not None:
        prof = manager.config.profile(name)
        if alg_id is not None and alg_id != prof.algorithm:
            raise PolicyError(
                f"{f.type} payload: profile {name!r} uses {prof.algorithm}, not {alg_id}"
            )
    else:
        profiles = [p for p in manager.config.profiles.values() if not hsm_only or _is_hsm(p)]
        if alg_id is not None:
            profiles = [p for p in profiles if p.algorithm == alg_id]
        elif not hsm_only:
            profiles = [p for p in profiles if p.name == "default"]
        if not profiles:
            what = "HSM profile" if hsm_only else "profile"
            using = f" using {alg_id}" if alg_id else ""
            raise PolicyError(
                f"{f.type} payload: signer.yaml has no {what}{using}; add one or name"
                " payload.profile"
            )
        chosen = [p for p in profiles if p.name == "default"] or profiles
        if len(chosen) > 1:
            names = ", ".join(p.name for p in chosen)
            raise PolicyError(
                f"{f.type} payload: several profiles fit ({names}); name one in payload.profile"
            )
        prof = chosen[0]
    if hsm_only and not _is_hsm(prof):
        raise PolicyError(
            f"{f.type} payload: profile {prof.name!r} keeps keys in {prof.key_store}, not in"
            " an HSM (hsm:// or pkcs11:)"
        )
    return prof, prof.algorithm


def normalize_payload(
    ceremony_type: str, payload: Mapping[str, Any], manager: ProtectedOperations
) -> dict[str, Any]:
    """The payload checked against the current keys, anchors and profiles, in canonical form.

    Raises PolicyError (or NotFoundError / ConflictError) with what is wrong.
    """
    if not isinstance(payload, Mapping):
        raise PolicyError("the ceremony payload must be a JSON object")
    # Bounded before anything else looks at it: nothing unbounded reaches the audit log.
    check_canonical_value(payload)
    size = len(canonical_json(payload))
    if size > MAX_PAYLOAD_BYTES:
        raise PolicyError(
            f"the ceremony payload is {size} bytes of JSON; the limit is {MAX_PAYLOAD_BYTES}"
        )
    if ceremony_type == POLICY_UPDATE:
        from stellakeys.ceremony.policy import normalize_policy_payload

        return normalize_policy_payload(payload)
    with manager.store.read() as tx:
        if ceremony_type == KEY_ROTATION:
            return _rotation(payload, manager, tx)
        if ceremony_type == HSM_KEY_GENERATION:
            f = _Fields(ceremony_type, payload, ["keyId", "algorithm", "profile"])
            key_id = _new_key_id(f, tx)
            prof, alg = _resolve_profile(manager, f, hsm_only=True)
            return {"keyId": key_id, "profile": prof.name, "algorithm": alg}
        if ceremony_type == KEY_REVOCATION:
            f = _Fields(ceremony_type, payload, ["keyId", "anchorId", "reason", "effectiveAt"])
            key_id = _existing_key(f, tx)
            anchor = _anchor_ref(f.req("anchorId"), "key-revocation anchorId", allow_all=True)
            if anchor != ALL:
                found = tx.get_anchor(uuid.UUID(anchor))
                if found is None:
                    raise NotFoundError(f"no trust anchor {anchor}")
                if found.entry(key_id) is None:
                    raise NotFoundError(f"key {key_id} is not in trust anchor {anchor}")
            elif not tx.history_of_key(key_id):
                raise NotFoundError(f"key {key_id} is in no trust anchor")
            reason = f.req("reason", maximum=MAX_REASON).strip()
            out = {"keyId": key_id, "anchorId": anchor, "reason": reason}
            effective = f.time("effectiveAt")
            if effective is not None:
                out["effectiveAt"] = effective
            return out
        if ceremony_type == TRUST_ANCHOR_UPDATE:
            return _anchor_update(payload, tx)
        if ceremony_type == RECOVERY_KEY_ACTIVATION:
            f = _Fields(ceremony_type, payload, ["keyId", "anchorId"])
            key_id = _existing_key(f, tx)
            anchor = _anchor_ref(
                f.text("anchorId", required=False) or ALL,
                "recovery-key-activation anchorId",
                allow_all=True,
            )
            if anchor != ALL:
                _active_anchor(tx, anchor)
            return {"keyId": key_id, "anchorId": anchor}
    raise PolicyError(f"unknown ceremony type {ceremony_type!r}")


def _new_key_id(f: _Fields, tx: Transaction) -> str:
    key_id = f.key_id("keyId")
    assert key_id is not None
    if tx.get_key(key_id) is not None:
        from stellakeys.errors import ConflictError

        raise ConflictError(f"key {key_id!r} already exists")
    return key_id


def _existing_key(f: _Fields, tx: Transaction) -> str:
    key_id = f.key_id("keyId")
    assert key_id is not None
    if tx.get_key(key_id) is None:
        raise NotFoundError(f"no key {key_id!r}")
    return key_id


def _active_anchor(tx: Transaction, anchor_id: str) -> None:
    found = tx.get_anchor(uuid.UUID(anchor_id))
    if found is None:
        raise NotFoundError(f"no trust anchor {anchor_id}")
    if not found.active:
        raise PolicyError(f"trust anchor {anchor_id} is inactive")


def _rotation(
    payload: Mapping[str, Any], manager: ProtectedOperations, tx: Transaction
) -> dict[str, Any]:
    f = _Fields(
        KEY_ROTATION,
        payload,
        [
            "keyId",
            "algorithm",
            "profile",
            "anchorIds",
            "replacesKeyId",
            "revokeReplacedAt",
            "revokeReason",
        ],
    )
    key_id = _new_key_id(f, tx)
    prof, alg = _resolve_profile(manager, f, hsm_only=False)
    anchors = [
        _anchor_ref(a, "key-rotation anchorIds", allow_all=False) for a in f.str_list("anchorIds")
    ]
    for anchor in anchors:
        _active_anchor(tx, anchor)
    out: dict[str, Any] = {
        "keyId": key_id,
        "profile": prof.name,
        "algorithm": alg,
        "anchorIds": anchors,
    }
    replaces = f.key_id("replacesKeyId", required=False)
    if replaces is not None:
        if tx.get_key(replaces) is None:
            raise NotFoundError(f"no key {replaces!r} to replace")
        out["replacesKeyId"] = replaces
    revoke_at = f.time("revokeReplacedAt")
    if revoke_at is not None:
        if replaces is None:
            raise PolicyError("key-rotation payload: revokeReplacedAt needs replacesKeyId")
        out["revokeReplacedAt"] = revoke_at
        reason = f.text("revokeReason", required=False, maximum=MAX_REASON) or "rotation"
        out["revokeReason"] = reason.strip()
    elif "revokeReason" in payload:
        raise PolicyError("key-rotation payload: revokeReason needs revokeReplacedAt")
    return out


def _anchor_update(payload: Mapping[str, Any], tx: Transaction) -> dict[str, Any]:
    action = payload.get("action")
    if action == "create":
        from stellakeys.purl import PurlPattern

        f = _Fields(
            TRUST_ANCHOR_UPDATE,
            payload,
            ["action", "anchorId", "purlPattern", "keyIds", "predicateTypes", "policyVersion"],
        )
        try:
            pattern = PurlPattern.parse(f.req("purlPattern", maximum=MAX_PURL_PATTERN)).text
        except MalformedPurlError as exc:
            raise PolicyError(f"trust-anchor-update payload: {exc}") from None
        key_ids = f.str_list("keyIds")
        predicate_types = f.str_list("predicateTypes")
        try:
            for key_id in key_ids:
                check_key_id(key_id)
            check_predicate_types(predicate_types)
        except PolicyError as exc:
            raise PolicyError(f"trust-anchor-update payload: {exc}") from None
        for key_id in key_ids:
            if tx.get_key(key_id) is None:
                raise NotFoundError(f"no key {key_id!r}")
        given = f.text("anchorId", required=False)
        anchor = _anchor_ref(given, "anchorId", allow_all=False) if given else str(uuid.uuid4())
        if tx.get_anchor(uuid.UUID(anchor)) is not None:
            from stellakeys.errors import ConflictError

            raise ConflictError(f"trust anchor {anchor} already exists")
        return {
            "action": "create",
            "anchorId": anchor,
            "purlPattern": pattern,
            "keyIds": key_ids,
            "predicateTypes": predicate_types,
            "policyVersion": f.text("policyVersion", required=False, maximum=MAX_POLICY_VERSION)
            or "v1",
        }
    if action == "add-key":
        f = _Fields(TRUST_ANCHOR_UPDATE, payload, ["action", "anchorId", "keyId"])
        key_id = _existing_key(f, tx)
        anchor = _anchor_ref(f.req("anchorId"), "anchorId", allow_all=True)
        if anchor != ALL:
            _active_anchor(tx, anchor)
        return {"action": "add-key", "anchorId": anchor, "keyId": key_id}
    if action == "deactivate":
        f = _Fields(TRUST_ANCHOR_UPDATE, payload, ["action", "anchorId"])
        anchor = _anchor_ref(f.req("anchorId"), "anchorId", allow_all=False)
        _active_anchor(tx, anchor)
        return {"action": "deactivate", "anchorId": anchor}
    raise PolicyError("trust-anchor-update payload needs action: create, add-key or deactivate")


# --- execution ----------------------------------------------------------------------------


def plan_for(ceremony: Ceremony) -> Plan:
    """The facade call that executes ``ceremony`` (whose payload was normalised at creation)."""
    p = ceremony.payload
    kind = ceremony.type
    if kind == KEY_ROTATION:
        revoke_at = p.get("revokeReplacedAt")
        return Plan(
            OP_KEY_ROTATION,
            {
                "keyId": p["keyId"],
                "profile": p["profile"],
                "algorithm": p["algorithm"],
                "anchorIds": p["anchorIds"],
                "replacesKeyId": p.get("replacesKeyId"),
                "revokeReplacedAt": revoke_at,
            },
            lambda m, a: m.rotate_key(
                p["keyId"],
                profile=p["profile"],
                algorithm=p["algorithm"],
                anchor_ids=p["anchorIds"],
                replaces=p.get("replacesKeyId"),
                revoke_replaced_at=parse_time(revoke_at) if revoke_at else None,
                revoke_reason=p.get("revokeReason", "rotation"),
                authorization=a,
            ),
        )
    if kind == HSM_KEY_GENERATION:
        return Plan(
            OP_HSM_KEY_GENERATION,
            {"keyId": p["keyId"], "profile": p["profile"], "algorithm": p["algorithm"]},
            lambda m, a: m.generate_key(
                p["keyId"], profile=p["profile"], algorithm=p["algorithm"], authorization=a
            ),
        )
    if kind == KEY_REVOCATION:
        expected = {"keyId": p["keyId"], "anchorId": p["anchorId"], "reason": p["reason"]}
        effective = p.get("effectiveAt")
        if effective is not None:
            expected["effectiveAt"] = effective
        return Plan(
            OP_KEY_REVOCATION,
            expected,
            lambda m, a: m.revoke_key(
                p["anchorId"],
                p["keyId"],
                p["reason"],
                parse_time(effective) if effective else None,
                authorization=a,
            ),
        )
    if kind == TRUST_ANCHOR_UPDATE:
        action = p["action"]
        if action == "create":
            return Plan(
                OP_TRUST_ANCHOR_UPDATE,
                dict(p),
                lambda m, a: m.create_anchor(
                    p["purlPattern"],
                    p["keyIds"],
                    p["predicateTypes"],
                    p["policyVersion"],
                    anchor_id=uuid.UUID(p["anchorId"]),
                    authorization=a,
                ),
            )
        if action == "add-key":
            return Plan(
                OP_TRUST_ANCHOR_UPDATE,
                dict(p),
                lambda m, a: m.add_key(p["anchorId"], p["keyId"], authorization=a),
            )
        return Plan(
            OP_TRUST_ANCHOR_UPDATE,
            dict(p),
            lambda m, a: m.deactivate_anchor(p["anchorId"], authorization=a),
        )
    if kind == RECOVERY_KEY_ACTIVATION:
        return Plan(
            OP_TRUST_ANCHOR_UPDATE,
            {"action": "add-key", "anchorId": p["anchorId"], "keyId": p["keyId"]},
            lambda m, a: m.add_key(p["anchorId"], p["keyId"], authorization=a),
        )
    raise PolicyError(f"ceremony type {kind!r} is not executed through the facade")


def _key_result(tx: Transaction, key_id: str, activated_at: str) -> dict[str, Any]:
    record = tx.get_key(key_id)
    if record is None:
        raise NotFoundError(f"no key {key_id!r}")
    return {
        "keyId": key_id,
        "publicKey": record.public_key_pem,
        "fingerprint": record.fingerprint,
        "activatedAt": activated_at,
    }


def result_for(
    ceremony: Ceremony, details: Mapping[str, Any], tx: Transaction, now: datetime
) -> dict[str, Any]:
    """The execution result recorded with the ceremony, in the runbook's shape where it has
    one (``keyId, publicKey, fingerprint, activatedAt`` for anything that brings a key into
    use), built from the guard's details and the transaction's view."""
    kind = ceremony.type
    p = ceremony.payload
    if kind in (KEY_ROTATION, HSM_KEY_GENERATION):
        out = {
            "keyId": details["keyId"],
            "publicKey": details["publicKey"],
            "fingerprint": details["fingerprint"],
            "activatedAt": details["activatedAt"],
        }
        if kind == KEY_ROTATION:
            out["anchors"] = list(details.get("anchors", []))
            for name in ("replacesKeyId", "revokeReplacedAt"):
                if p.get(name) is not None:
                    out[name] = p[name]
        return out
    if kind == KEY_REVOCATION:
        record = tx.get_key(details["keyId"])
        return {
            "keyId": details["keyId"],
            "fingerprint": record.fingerprint if record else None,
            "anchorId": details["anchorId"],
            "reason": details["reason"],
            "effectiveAt": details["effectiveAt"],
        }
    if kind == RECOVERY_KEY_ACTIVATION:
        return {
            **_key_result(tx, details["keyId"], format_time(now)),
            "anchorId": details["anchorId"],
        }
    if p.get("action") == "add-key":
        return {
            "action": "add-key",
            **_key_result(tx, details["keyId"], format_time(now)),
            "anchorId": details["anchorId"],
        }
    return dict(p)

"""Key operations of the KeyManager facade: generate, rotate, import, validity and
rotation status. Plain functions taking the facade (typed as :class:`ManagerCore`); the
facade's methods of the same names delegate here and carry the documentation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stellakeys._crashpoints import crash_point
from stellakeys.audit import EventType
from stellakeys.ceremony.ports import Authorization
from stellakeys.crypto import Algorithm, load_public_key_pem
from stellakeys.errors import (
    ConflictError,
    NotFoundError,
    PolicyError,
)
from stellakeys.intents import INTENT_GENERATE, INTENT_ROTATE, KeyIntent
from stellakeys.key_lifecycle import (
    begin_intent,
    obtain_key,
)
from stellakeys.keys import KeyOrigin, KeyRecord
from stellakeys.keystores.ports import KeyHandle
from stellakeys.manager_anchors import record_revocation, target_anchors
from stellakeys.manager_core import ManagerCore
from stellakeys.manager_values import (
    OP_HSM_KEY_GENERATION,
    OP_KEY_GENERATION,
    OP_KEY_ROTATION,
    AnchorKeyValidity,
    KeyValidity,
    anchor_uuid,
    check_new_key_id,
    history_entry,
    is_hsm,
)
from stellakeys.profiles import KeyProfile
from stellakeys.revocation import parse_reason
from stellakeys.rotation import RotationWarning
from stellakeys.rotation import rotation_warnings as _rotation_warnings
from stellakeys.storage.ports import Transaction
from stellakeys.times import format_time

if TYPE_CHECKING:
    pass


def generate_in_store(
    m: ManagerCore,
    prof: KeyProfile,
    alg: Algorithm,
    key_id: str,
    operation: str = INTENT_GENERATE,
    params: dict[str, Any] | None = None,
) -> tuple[KeyHandle, KeyRecord]:
    # The key store is a different system than the database. An intent is recorded first,
    # the key made second (its identity noted in the intent before it is durable), the
    # record last, deleting the intent in the same transaction: a crash anywhere leaves
    # an intent that a re-run (or 'stellaops doctor --repair') finishes (decision 0016).
    intent = begin_intent(
        m.store,
        KeyIntent(key_id, operation, prof.name, alg.id, prof.key_store, m._now(), params or {}),
    )
    handle = obtain_key(m.store, m._key_store(prof.key_store), intent, alg)
    public = handle.public_key()
    record = KeyRecord(
        key_id=key_id,
        algorithm=alg.id,
        public_key_pem=public.to_pem(),
        fingerprint=public.fingerprint,
        created_at=m._now(),
        profile=prof.name,
        key_store_uri=handle.uri,
        origin=KeyOrigin.GENERATED,
    )
    return handle, record


def insert_generated(
    m: ManagerCore, tx: Transaction, record: KeyRecord, ceremony_id: str | None, **details: Any
) -> None:
    tx.insert_key(record)
    tx.delete_intent(record.key_id)
    m._audit(
        tx,
        EventType.KEY_GENERATED,
        key_id=record.key_id,
        ceremony_id=ceremony_id,
        details={
            "profile": record.profile,
            "algorithm": record.algorithm,
            "fingerprint": record.fingerprint,
            "keyStore": record.key_store_uri,
            **details,
        },
    )


def generate_key(
    m: ManagerCore,
    key_id: str,
    profile: str = "default",
    algorithm: str | None = None,
    *,
    authorization: Authorization | None = None,
) -> KeyRecord:
    """The body of :meth:`KeyManager.generate_key` (documented there)."""
    check_new_key_id(key_id)
    prof, alg = m._profile_algorithm(profile, algorithm)
    operation = OP_HSM_KEY_GENERATION if is_hsm(prof.key_store) else OP_KEY_GENERATION
    guard_details: dict[str, Any] = {
        "keyId": key_id,
        "profile": prof.name,
        "keyStore": prof.key_store,
        "algorithm": alg.id,
    }
    m._preflight(operation, guard_details, authorization)
    with m.store.read() as tx:
        if tx.get_key(key_id) is not None:
            raise ConflictError(f"key {key_id!r} already exists")
    handle, record = generate_in_store(m, prof, alg, key_id)
    with m.store.transaction() as tx:
        cid = m._guard(
            tx,
            operation,
            {
                **guard_details,
                "publicKey": record.public_key_pem,
                "fingerprint": record.fingerprint,
                "activatedAt": format_time(record.created_at),
            },
            authorization,
        )
        insert_generated(m, tx, record, cid)
        crash_point("before-commit")  # test-only (stellakeys._crashpoints)
    crash_point("committed")
    with m._ks_lock:
        m._handles[handle.uri] = handle
    return record


def rotate_key(
    m: ManagerCore,
    key_id: str,
    *,
    profile: str = "default",
    algorithm: str | None = None,
    anchor_ids: Sequence[uuid.UUID | str] = (),
    replaces: str | None = None,
    revoke_replaced_at: datetime | None = None,
    revoke_reason: str = "rotation",
    authorization: Authorization | None = None,
) -> KeyRecord:
    """The body of :meth:`KeyManager.rotate_key` (documented there)."""
    check_new_key_id(key_id)
    if revoke_replaced_at is not None and replaces is None:
        raise PolicyError("revoke_replaced_at needs the key being replaced")
    if revoke_replaced_at is not None and not revoke_reason.strip():
        raise PolicyError("a revocation needs a reason")
    reason = parse_reason(revoke_reason)
    prof, alg = m._profile_algorithm(profile, algorithm)
    requested = [str(anchor_uuid(a)) for a in dict.fromkeys(anchor_ids)]
    guard_details: dict[str, Any] = {
        "keyId": key_id,
        "profile": prof.name,
        "keyStore": prof.key_store,
        "algorithm": alg.id,
        "anchorIds": requested,
        "replacesKeyId": replaces,
        "revokeReplacedAt": format_time(revoke_replaced_at) if revoke_replaced_at else None,
    }
    m._preflight(OP_KEY_ROTATION, guard_details, authorization)
    with m.store.read() as tx:
        if tx.get_key(key_id) is not None:
            raise ConflictError(f"key {key_id!r} already exists")
        if replaces is not None:
            m._require_key(tx, replaces)
    handle, record = generate_in_store(
        m,
        prof,
        alg,
        key_id,
        INTENT_ROTATE,
        {
            "anchorIds": requested,
            "replaces": replaces,
            "revokeReplacedAt": guard_details["revokeReplacedAt"],
            "revokeReason": revoke_reason,
        },
    )
    now = record.created_at
    with m.store.transaction() as tx:
        if requested:
            targets = [target_anchors(m, tx, a, for_add=True)[0] for a in requested]
        elif replaces is not None:
            targets = [
                a
                for a in tx.list_anchors(active_only=True)
                if (e := a.entry(replaces)) is not None and e.valid_at(now)
            ]
        else:
            targets = []
        cid = m._guard(
            tx,
            OP_KEY_ROTATION,
            {
                **guard_details,
                "anchors": [str(a.anchor_id) for a in targets],
                "publicKey": record.public_key_pem,
                "fingerprint": record.fingerprint,
                "activatedAt": format_time(now),
            },
            authorization,
        )
        insert_generated(m, tx, record, cid, replaces=replaces)
        for anchor in targets:
            tx.insert_history(history_entry(anchor.anchor_id, record, now))
            m._audit(
                tx,
                EventType.KEY_ADDED,
                key_id=key_id,
                anchor_id=anchor.anchor_id,
                ceremony_id=cid,
                details={"addedAt": format_time(now), "replaces": replaces},
            )
            old = anchor.entry(replaces) if replaces is not None else None
            if revoke_replaced_at is None or old is None:
                continue
            # Never postponed, never weakened: a key already revoked earlier, or for a
            # stronger reason (compromise), keeps that (stellakeys.revocation).
            record_revocation(
                m, tx, old, old.revoke(revoke_replaced_at, reason), now, cid, replacedBy=key_id
            )
        if reason.is_compromise and revoke_replaced_at is not None and replaces is not None:
            # Compromise is a fact about the key: every other anchor holding it too.
            done = {a.anchor_id for a in targets}
            for other in tx.history_of_key(replaces):
                if other.anchor_id not in done:
                    record_revocation(
                        m,
                        tx,
                        other,
                        other.revoke(revoke_replaced_at, reason),
                        now,
                        cid,
                        replacedBy=key_id,
                        compromiseRecordedVia=f"rotation to {key_id}",
                    )
        crash_point("before-commit")  # test-only (stellakeys._crashpoints)
    crash_point("committed")
    with m._ks_lock:
        m._handles[handle.uri] = handle
    return record


def import_key(
    m: ManagerCore, key_id: str, public_key_pem: str, profile: str | None = None
) -> KeyRecord:
    """The body of :meth:`KeyManager.import_key` (documented there)."""
    check_new_key_id(key_id)
    public = load_public_key_pem(public_key_pem)
    if profile is not None:
        m.config.profile(profile)
    record = KeyRecord(
        key_id=key_id,
        algorithm=public.algorithm.id,
        public_key_pem=public.to_pem(),
        fingerprint=public.fingerprint,
        created_at=m._now(),
        profile=profile,
        key_store_uri=None,
        origin=KeyOrigin.IMPORTED,
    )
    with m.store.transaction() as tx:
        tx.insert_key(record)
        m._audit(
            tx,
            EventType.KEY_IMPORTED,
            key_id=key_id,
            details={"algorithm": record.algorithm, "fingerprint": record.fingerprint},
        )
    return record


def check_validity(m: ManagerCore, key_id: str, at: datetime | None = None) -> KeyValidity:
    when = at or m._now()
    with m.store.read() as tx:
        if tx.get_key(key_id) is None:
            raise NotFoundError(f"no key {key_id!r}")
        entries = tx.history_of_key(key_id)
        anchors = {e.anchor_id: tx.get_anchor(e.anchor_id) for e in entries}
    rows = tuple(
        AnchorKeyValidity(
            e.anchor_id,
            a.purl_pattern if (a := anchors[e.anchor_id]) else "?",
            e.valid_at(when),
            e,
        )
        for e in entries
    )
    return KeyValidity(key_id, when, rows)


def rotation_warnings(m: ManagerCore, at: datetime | None = None) -> list[RotationWarning]:
    """The body of :meth:`KeyManager.rotation_warnings` (documented there)."""
    now = at or m._now()
    with m.store.read() as tx:
        keys = tx.list_keys()
        retired = {
            k.key_id
            for k in keys
            if (h := tx.history_of_key(k.key_id)) and all(e.is_revoked_at(now) for e in h)
        }
    return _rotation_warnings((k for k in keys if k.key_id not in retired), m.config, now)

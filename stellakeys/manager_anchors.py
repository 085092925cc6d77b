"""Trust-anchor operations of the KeyManager facade: create, deactivate, add and revoke
keys, and the runbook's ``anchor status``. Plain functions taking the facade (typed as
:class:`ManagerCore`); the facade's methods of the same names delegate here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.anchor_proofs import proofs_of_anchor
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import EventType
from stellakeys.ceremony.ports import Authorization
from stellakeys.errors import (
    ConflictError,
    NotFoundError,
    PolicyError,
)
from stellakeys.limits import (
    MAX_POLICY_VERSION,
    MAX_PURL_PATTERN,
    MAX_REASON,
    check_key_id,
    check_list_size,
    check_predicate_types,
    check_text,
)
from stellakeys.manager_core import ManagerCore
from stellakeys.manager_values import (
    ALL_ANCHORS,
    OP_KEY_REVOCATION,
    OP_TRUST_ANCHOR_UPDATE,
    AnchorStatus,
    anchor_uuid,
    history_entry,
    parsed_pattern,
)
from stellakeys.purl import PurlPattern, overlaps_ambiguously
from stellakeys.revocation import RevocationReason, parse_reason
from stellakeys.storage.ports import Transaction
from stellakeys.times import format_time
from stellakeys.verification import key_wide_compromises

if TYPE_CHECKING:
    pass


def create_anchor(
    m: ManagerCore,
    purl_pattern: str,
    key_ids: Sequence[str],
    predicate_types: Sequence[str],
    policy_version: str = "v1",
    anchor_id: uuid.UUID | None = None,
    *,
    authorization: Authorization | None = None,
) -> TrustAnchor:
    # The limits a trust-anchor-update ceremony's payload was checked against at create.
    check_text(purl_pattern, "purlPattern", MAX_PURL_PATTERN)
    check_list_size(key_ids, "keyIds")
    for key_id in key_ids:
        check_key_id(key_id)
    check_predicate_types(predicate_types)
    check_text(policy_version, "policyVersion", MAX_POLICY_VERSION)
    pattern = PurlPattern.parse(purl_pattern)
    now = m._now()
    new_id = anchor_id or uuid.uuid4()
    with m.store.transaction() as tx:
        cid = m._guard(
            tx,
            OP_TRUST_ANCHOR_UPDATE,
            {
                "action": "create",
                "anchorId": str(new_id),
                "purlPattern": pattern.text,
                "keyIds": list(key_ids),
                "predicateTypes": list(predicate_types),
                "policyVersion": policy_version,
            },
            authorization,
        )
        # Only anchors on the new pattern's key chain or nested under its index key can
        # match the same artifacts (decision 0003); the store finds them by index.
        related = tx.anchors_by_index_keys(pattern.key_chain)
        if not pattern.is_universal:
            related += tx.anchors_below_index_key(pattern.index_key)
        for other in related:
            other_pattern = parsed_pattern(other.purl_pattern)
            if other_pattern.text == pattern.text or overlaps_ambiguously(pattern, other_pattern):
                raise ConflictError(
                    f"pattern {pattern.text!r} ties with anchor {other.anchor_id}"
                    f" ({other.purl_pattern!r}) on the same artifacts"
                )
        history = tuple(
            history_entry(new_id, m._require_key(tx, k), now) for k in dict.fromkeys(key_ids)
        )
        anchor = TrustAnchor(
            anchor_id=new_id,
            purl_pattern=pattern.text,
            allowed_predicate_types=tuple(dict.fromkeys(predicate_types)),
            policy_version=policy_version,
            created_at=now,
            key_history=history,
        )
        tx.insert_anchor(anchor, pattern.index_key)
        m._audit(
            tx,
            EventType.ANCHOR_CREATED,
            anchor_id=new_id,
            ceremony_id=cid,
            details={
                "purlPattern": pattern.text,
                "keyIds": [e.key_id for e in history],
                "predicateTypes": list(anchor.allowed_predicate_types),
                "policyVersion": policy_version,
            },
        )
        for e in history:
            m._audit(
                tx,
                EventType.KEY_ADDED,
                key_id=e.key_id,
                anchor_id=new_id,
                ceremony_id=cid,
                details={"addedAt": format_time(e.added_at)},
            )
    return anchor


def deactivate_anchor(
    m: ManagerCore, anchor_id: uuid.UUID | str, *, authorization: Authorization | None = None
) -> TrustAnchor:
    aid = anchor_uuid(anchor_id)
    with m.store.transaction() as tx:
        cid = m._guard(
            tx,
            OP_TRUST_ANCHOR_UPDATE,
            {"action": "deactivate", "anchorId": str(aid)},
            authorization,
        )
        anchor = tx.get_anchor(aid)
        if anchor is None:
            raise NotFoundError(f"no trust anchor {aid}")
        if not anchor.active:
            raise ConflictError(f"trust anchor {aid} is already inactive")
        tx.set_anchor_active(aid, False)
        m._audit(
            tx,
            EventType.ANCHOR_DEACTIVATED,
            anchor_id=aid,
            ceremony_id=cid,
            details={"purlPattern": anchor.purl_pattern},
        )
    return attrs.evolve(anchor, active=False)


def add_key(
    m: ManagerCore,
    anchor_id: uuid.UUID | str,
    key_id: str,
    added_at: datetime | None = None,
    *,
    authorization: Authorization | None = None,
) -> list[uuid.UUID]:
    """The body of :meth:`KeyManager.add_key` (documented there)."""
    when = added_at or m._now()
    changed: list[uuid.UUID] = []
    with m.store.transaction() as tx:
        cid = m._guard(
            tx,
            OP_TRUST_ANCHOR_UPDATE,
            {"action": "add-key", "anchorId": str(anchor_id), "keyId": key_id},
            authorization,
        )
        record = m._require_key(tx, key_id)
        for anchor in target_anchors(m, tx, anchor_id, for_add=True):
            if anchor.entry(key_id) is not None:
                if anchor_id == ALL_ANCHORS:
                    continue
                raise ConflictError(f"key {key_id} is already in anchor {anchor.anchor_id}")
            tx.insert_history(history_entry(anchor.anchor_id, record, when))
            m._audit(
                tx,
                EventType.KEY_ADDED,
                key_id=key_id,
                anchor_id=anchor.anchor_id,
                ceremony_id=cid,
                details={"addedAt": format_time(when)},
            )
            changed.append(anchor.anchor_id)
    return changed


def revoke_key(
    m: ManagerCore,
    anchor_id: uuid.UUID | str,
    key_id: str,
    reason: str | RevocationReason,
    effective_at: datetime | None = None,
    *,
    authorization: Authorization | None = None,
) -> list[uuid.UUID]:
    """The body of :meth:`KeyManager.revoke_key` (documented there)."""
    if isinstance(reason, str):
        if not reason.strip():
            raise PolicyError("a revocation needs a reason")
        check_text(reason, "a revocation reason", MAX_REASON)
    parsed = parse_reason(reason)
    now = m._now()
    when = effective_at or now
    changed: list[uuid.UUID] = []
    with m.store.transaction() as tx:
        cid = m._guard(
            tx,
            OP_KEY_REVOCATION,
            {
                "anchorId": str(anchor_id),
                "keyId": key_id,
                "reason": reason if isinstance(reason, str) else reason.value,
                "effectiveAt": format_time(when),
            },
            authorization,
        )
        m._require_key(tx, key_id)
        named = [a for a in target_anchors(m, tx, anchor_id, for_add=False) if a.entry(key_id)]
        if not named:
            raise NotFoundError(f"key {key_id} is not in trust anchor {anchor_id}")
        targets = list(named)
        seen = {a.anchor_id for a in named}
        if parsed.is_compromise:
            targets += [
                a
                for a in tx.list_anchors()
                if a.anchor_id not in seen and a.entry(key_id) is not None
            ]
        for anchor in targets:
            entry = anchor.entry(key_id)
            assert entry is not None
            revoked = entry.revoke(when, parsed)
            if revoked == entry and entry.revoked_at is not None:
                if anchor_id == ALL_ANCHORS or anchor.anchor_id not in seen:
                    continue
                raise ConflictError(
                    f"key {key_id} is already revoked in anchor {anchor.anchor_id}"
                    f" at {format_time(entry.revoked_at)} ({entry.revoke_reason}):"
                    " a revocation can only be made earlier or stronger"
                )
            extra: dict[str, Any] = {}
            if anchor.anchor_id not in seen:
                extra["compromiseRecordedVia"] = str(anchor_id)
            record_revocation(m, tx, entry, revoked, now, cid, **extra)
            changed.append(anchor.anchor_id)
    return changed


def record_revocation(
    m: ManagerCore,
    tx: Transaction,
    before: KeyHistoryEntry,
    after: KeyHistoryEntry,
    now: datetime,
    ceremony_id: str | None,
    **extra: Any,
) -> None:
    """Store a revocation (when it changes anything) and audit the resulting state: the
    event carries the entry's revocation time and reason after the change, which is what
    ``audit verify`` replays into key history."""
    if after == before or after.revoked_at is None:
        return
    tx.update_history(after)
    m._audit(
        tx,
        EventType.KEY_REVOKED,
        key_id=after.key_id,
        anchor_id=after.anchor_id,
        ceremony_id=ceremony_id,
        details={
            "reason": after.revoke_reason,
            "effectiveAt": format_time(after.revoked_at),
            "scheduled": after.revoked_at > now,
            "previousRevokedAt": format_time(before.revoked_at) if before.revoked_at else None,
            "previousReason": before.revoke_reason,
            **extra,
        },
    )


#: Proofs per read transaction of ``anchor_status``, and how many PURL decisions it keeps.
_STATUS_CHUNK = 1000
_MATCHED_KEPT = 100_000


def anchor_status(m: ManagerCore, anchor_id: uuid.UUID | str) -> AnchorStatus:
    anchor = m.get_anchor(anchor_id)
    now = m._now()
    pattern = PurlPattern.parse(anchor.purl_pattern)
    total = verified = rescans = 0
    with m.store.read() as tx:
        # Key-wide: a key compromised in another anchor is compromised here too.
        found = key_wide_compromises(
            tx.history_by_fingerprints({e.fingerprint for e in anchor.key_history})
        )
    compromised = {e.key_id for e in anchor.key_history if e.fingerprint in found}
    # The proofs filed under the pattern's index key (a superset; only this anchor's are kept,
    # stellakeys.anchor_proofs), read in chunks of _STATUS_CHUNK, each in its own short read
    # transaction and verified outside it: memory stays flat at a million proofs, and no read
    # snapshot is held while verifying.
    matched: dict[str, bool] = {}
    after: str | None = None
    while True:
        with m.store.read() as tx:
            chunk = list(tx.iter_proof_candidates(pattern.index_key, after, _STATUS_CHUNK))
        if not chunk:
            break
        after = chunk[-1].digest
        if len(matched) > _MATCHED_KEPT:  # a cache: bounded, so memory stays flat
            matched = {}
        # The chunk is judged under one change token read after it (not one per proof: a
        # PostgreSQL round trip, or a PRAGMA, each): a revocation committed while it is being
        # verified counts from the next chunk on.
        with m._verifying.one_token():
            for proof, envelope, purl in proofs_of_anchor(chunk, pattern, matched):
                total += 1
                result = m.verify(
                    envelope, purl=purl, at=proof.created_at, timestamps=proof.timestamp_tokens
                )
                verified += result.ok
                signers = {s.keyid for s in envelope.signatures}
                if signers & compromised and not proof.timestamp_tokens:
                    rescans += 1
        if len(chunk) < _STATUS_CHUNK:
            break
    return AnchorStatus(anchor, now, total, verified, rescans)


def target_anchors(
    m: ManagerCore, tx: Transaction, anchor_id: uuid.UUID | str, *, for_add: bool
) -> list[TrustAnchor]:
    if anchor_id == ALL_ANCHORS:
        # Emergency revocation reaches inactive anchors too: their proofs are still
        # verified by forensics, and a stolen key must not stay trusted there.
        return tx.list_anchors(active_only=for_add)
    aid = anchor_uuid(anchor_id)
    anchor = tx.get_anchor(aid)
    if anchor is None:
        raise NotFoundError(f"no trust anchor {aid}")
    if for_add and not anchor.active:
        raise ConflictError(f"trust anchor {aid} is inactive")
    return [anchor]

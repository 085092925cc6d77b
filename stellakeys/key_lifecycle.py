"""Key identity at use and crash-consistent key creation, for the KeyManager facade.

Identity. A key record holds the public key recorded when the key was made; what a key store
hands back is evidence, not truth. Every handle is compared with the record when it is opened
and again before it signs, and every signature is verified with the *recorded* public key
before a proof is stored or returned (which also catches a token that signs with another key
under the same CKA_ID, and fault attacks). A mismatch is a :class:`KeyIdentityError` naming
both fingerprints.

Crash consistency. ``generate`` and ``rotate`` write a :class:`KeyIntent` before touching the
key store, let the store report the key's identity before it makes the key durable, and delete
the intent in the transaction that records the key. Re-running the interrupted operation with
the same arguments resumes it: a key the store holds under the key id is adopted only if it is
the key the intent prepared. :func:`diagnose` and :func:`repair` back ``stellaops doctor``.
See docs/decisions/0016-key-identity-and-crash-consistency.md.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from stellakeys._crashpoints import crash_point
from stellakeys.crypto import Algorithm
from stellakeys.dsse import Envelope
from stellakeys.errors import ConflictError, KeyIdentityError, StellaKeysError
from stellakeys.intents import INTENT_GENERATE, INTENT_ROTATE, KeyIntent
from stellakeys.keys import KeyRecord
from stellakeys.keystores.ports import FoundKey, KeyHandle, KeyStore, PreparedKey
from stellakeys.storage.ports import Store

if TYPE_CHECKING:
    from stellakeys.profiles import SignerConfig


class LifecycleFacade(Protocol):
    """What diagnosis and repair need of the facade (``stellakeys.manager.KeyManager``), as a
    protocol: this module sits below the facade and must not import it (no import cycle)."""

    @property
    def store(self) -> Store: ...

    @property
    def config(self) -> SignerConfig: ...

    def _key_store(self, uri: str) -> KeyStore: ...

    @property
    def generate_key(self) -> Callable[..., KeyRecord]: ...

    @property
    def rotate_key(self) -> Callable[..., KeyRecord]: ...


__all__ = [
    "Diagnosis",
    "Finding",
    "begin_intent",
    "check_handle",
    "diagnose",
    "obtain_key",
    "repair",
    "verify_own_signatures",
]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# --- identity ------------------------------------------------------------------------------


def check_handle(record: KeyRecord, handle: KeyHandle, where: str) -> None:
    """Refuse a handle whose public key is not the recorded one."""
    found = handle.public_key().fingerprint
    if not _same(found, record.fingerprint):
        raise KeyIdentityError(record.key_id, record.fingerprint, found, where)


def verify_own_signatures(
    envelope: Envelope, records: Sequence[KeyRecord], handles: Sequence[KeyHandle]
) -> None:
    """Verify signature i of ``envelope`` with the recorded public key of ``records[i]``.

    A key store that signed with any other key (a planted key under the pinned id, a faulty
    signature) is refused here, before the proof exists anywhere."""
    message = envelope.pae()
    for signature, record, handle in zip(envelope.signatures, records, handles, strict=True):
        if record.public_key().is_valid(signature.sig, message):
            continue
        claimed = handle.public_key().fingerprint
        found = (
            claimed
            if not _same(claimed, record.fingerprint)
            else "another key (its signature does not verify under the recorded public key)"
        )
        raise KeyIdentityError(record.key_id, record.fingerprint, found, f"key store {handle.uri}")


# --- crash-consistent creation ----------------------------------------------------------------


def begin_intent(store: Store, intent: KeyIntent) -> KeyIntent:
    """Record ``intent`` (or find the same one left by an interrupted run) before the key
    store is touched. ConflictError if the key exists or another request holds the key id."""
    with store.transaction() as tx:
        if tx.get_key(intent.key_id) is not None:
            raise ConflictError(f"key {intent.key_id!r} already exists")
        existing = tx.get_intent(intent.key_id)
        if existing is not None:
            if not existing.same_request(intent):
                raise ConflictError(
                    f"key {intent.key_id!r} has an unfinished {existing.operation} (profile "
                    f"{existing.profile}, {existing.algorithm}) with other arguments: re-run "
                    "that, or see 'stellaops doctor'"
                )
            return existing
        tx.put_intent(intent)
    crash_point("intent-written")
    return intent


def _accepts_prepared(key_store: KeyStore) -> bool:
    try:
        return "prepared" in inspect.signature(key_store.generate).parameters
    except (TypeError, ValueError):
        return False


def _matches_intent(found: FoundKey, intent: KeyIntent) -> bool:
    if intent.fingerprint is not None:
        return _same(found.public_key.fingerprint, intent.fingerprint)
    if intent.key_store_uri is not None:
        return _same(found.pinned_uri, intent.key_store_uri)
    return False


def obtain_key(store: Store, key_store: KeyStore, intent: KeyIntent, alg: Algorithm) -> KeyHandle:
    """The key for ``intent``: the one a previous, interrupted run left in the key store (if
    it is the key that run prepared), else a new one whose identity is recorded in the intent
    before the store makes it durable."""
    find = getattr(key_store, "find", None)
    found: FoundKey | None = find(intent.key_id) if callable(find) else None
    if found is not None:
        if not _matches_intent(found, intent):
            raise ConflictError(
                f"key store {intent.key_store} already holds a key {intent.key_id!r} "
                f"({found.public_key.fingerprint}) that this {intent.operation} did not make "
                f"(it prepared {intent.fingerprint or intent.key_store_uri or 'no key yet'}); "
                "refusing to adopt it: 'stellaops doctor --repair' sets it aside, or choose "
                "another key id"
            )
        handle = key_store.open(found.pinned_uri)
        if not _same(handle.public_key().fingerprint, found.public_key.fingerprint):
            raise KeyIdentityError(
                intent.key_id,
                found.public_key.fingerprint,
                handle.public_key().fingerprint,
                f"key store {intent.key_store}",
            )
        if handle.public_key().algorithm is not alg:
            raise ConflictError(
                f"the key {intent.key_id!r} left in {intent.key_store} is "
                f"{handle.public_key().algorithm.id}, not {alg.id}"
            )
        return handle

    def prepared(p: PreparedKey) -> None:
        public = p.public_key
        updated = attrs.evolve(
            intent,
            key_store_uri=p.pinned_uri,
            public_key_pem=public.to_pem() if public is not None else None,
            fingerprint=public.fingerprint if public is not None else None,
        )
        with store.transaction() as tx:
            tx.put_intent(updated)
        crash_point("key-prepared")

    try:
        if _accepts_prepared(key_store):
            handle = key_store.generate(alg, intent.key_id, prepared=prepared)  # type: ignore[call-arg]
        else:
            handle = key_store.generate(alg, intent.key_id)
    except StellaKeysError:
        # Refused by the store (unsupported algorithm, wrong PIN, ...): if it holds no key under
        # the id, nothing is half-done, so the intent goes and the key id stays free for a
        # different request. If that cannot be established, the intent stays for doctor.
        with contextlib.suppress(StellaKeysError):
            if not callable(find) or find(intent.key_id) is None:
                with store.transaction() as tx:
                    tx.delete_intent(intent.key_id)
        raise
    crash_point("key-created")
    return handle


# --- stellaops doctor -----------------------------------------------------------------------


@attrs.frozen
class Finding:
    """One thing ``stellaops doctor`` found. ``kind``: ``intent`` (an unfinished generate or
    rotate), ``orphan-key`` (a key in a key store with no record), ``replaced-key`` (a key
    whose store holds another key than recorded), ``stale-tmp`` (a temp file of a write that
    never finished), ``store-error`` (a key store that could not be inspected)."""

    kind: str
    key_id: str | None
    store: str
    detail: str
    repaired: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "keyId": self.key_id,
            "store": self.store,
            "detail": self.detail,
            "repaired": self.repaired,
        }


@attrs.frozen
class Diagnosis:
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "findings": [f.to_dict() for f in self.findings]}


def _store_uris(manager: LifecycleFacade, intents: Iterable[KeyIntent]) -> list[str]:
    uris = [p.key_store for p in manager.config.profiles.values()]
    uris += [i.key_store for i in intents]
    return list(dict.fromkeys(uris))


def diagnose(manager: LifecycleFacade, *, tmp_min_age_seconds: float = 60.0) -> Diagnosis:
    """Unfinished intents, orphan or replaced keys and stale temp files of every key store
    named by a profile or an intent. Read-only."""
    with manager.store.read() as tx:
        intents = tx.list_intents()
        records = {r.key_id: r for r in tx.list_keys()}
    pending = {i.key_id: i for i in intents}
    findings = [
        Finding(
            "intent",
            i.key_id,
            i.key_store,
            f"unfinished {i.operation} (profile {i.profile}, {i.algorithm}) since "
            f"{i.to_dict()['createdAt']}",
        )
        for i in intents
    ]
    for uri in _store_uris(manager, intents):
        try:
            key_store = manager._key_store(uri)
            listing = getattr(key_store, "list_keys", None)
            keys: list[FoundKey] = listing() if callable(listing) else []
            temp_files = getattr(key_store, "temp_files", None)
            temps: list[Path] = temp_files(tmp_min_age_seconds) if callable(temp_files) else []
        except StellaKeysError as exc:
            findings.append(Finding("store-error", None, uri, str(exc)))
            continue
        for found in keys:
            record = records.get(found.key_id)
            fp = found.public_key.fingerprint
            if record is None:
                owner = pending.get(found.key_id)
                note = (
                    f"; left by the unfinished {owner.operation} (re-run it, or --repair)"
                    if owner is not None and _matches_intent(found, owner)
                    else "; no intent made it"
                )
                findings.append(Finding("orphan-key", found.key_id, uri, f"{fp}{note}"))
            elif record.key_store_uri is not None and not _same(fp, record.fingerprint):
                detail = (
                    f"store holds {fp} under this key id, the record holds {record.fingerprint}"
                )
                findings.append(Finding("replaced-key", found.key_id, uri, detail))
        findings.extend(Finding("stale-tmp", None, uri, str(path), None) for path in temps)
    return Diagnosis(tuple(findings))


def resume(manager: LifecycleFacade, intent: KeyIntent) -> KeyRecord:
    """Finish an unfinished intent by re-running its operation with its recorded arguments
    (through the facade, so the operation guard and the audit trail apply as usual)."""
    if intent.operation == INTENT_GENERATE:
        return manager.generate_key(intent.key_id, intent.profile, intent.algorithm)
    if intent.operation == INTENT_ROTATE:
        from stellakeys.times import parse_time

        p = dict(intent.params)
        revoke_at = p.get("revokeReplacedAt")
        return manager.rotate_key(
            intent.key_id,
            profile=intent.profile,
            algorithm=intent.algorithm,
            anchor_ids=list(p.get("anchorIds") or ()),
            replaces=p.get("replaces"),
            revoke_replaced_at=parse_time(revoke_at) if revoke_at else None,
            revoke_reason=str(p.get("revokeReason") or "rotation"),
        )
    raise ConflictError(f"unknown intent operation {intent.operation!r} for {intent.key_id}")


def repair(manager: LifecycleFacade, diagnosis: Diagnosis) -> Diagnosis:
    """Repair what :func:`diagnose` found: remove stale temp files; set aside (never delete)
    orphan keys that no intent can adopt; finish unfinished intents. Returns the findings
    with what was done (or why not) in ``repaired``."""
    with manager.store.read() as tx:
        pending = {i.key_id: i for i in tx.list_intents()}
    done: list[Finding] = []
    # Orphans first: an intent whose key id is held by a key it did not make can then finish.
    order = {"stale-tmp": 0, "orphan-key": 1, "intent": 2}
    for f in sorted(diagnosis.findings, key=lambda f: order.get(f.kind, 3)):
        try:
            done.append(attrs.evolve(f, repaired=_repair_one(manager, f, pending)))
        except StellaKeysError as exc:
            done.append(attrs.evolve(f, repaired=f"not repaired: {exc}"))
    return Diagnosis(tuple(done))


def _repair_one(manager: LifecycleFacade, f: Finding, pending: dict[str, KeyIntent]) -> str:
    if f.kind == "stale-tmp":
        manager._key_store(f.store).remove_temp_file(Path(f.detail))  # type: ignore[attr-defined]
        return "removed"
    if f.kind == "orphan-key" and f.key_id is not None:
        owner = pending.get(f.key_id)
        key_store = manager._key_store(f.store)
        found = key_store.find(f.key_id)  # type: ignore[attr-defined]
        if owner is not None and found is not None and _matches_intent(found, owner):
            return "left for its intent, which adopts it"
        quarantine = getattr(key_store, "quarantine", None)
        if not callable(quarantine):
            return "not repaired: this key store cannot set keys aside; remove it by hand"
        return f"set aside as {quarantine(f.key_id)}"
    if f.kind == "intent" and f.key_id is not None:
        intent = pending.get(f.key_id)
        if intent is None:
            return "already finished"
        record = resume(manager, intent)
        return f"finished: {record.key_id} {record.fingerprint}"
    return "not repaired: needs a person (restore the recorded key or fix the key store)"

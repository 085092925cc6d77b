"""KeyManager: the facade through which every change goes, so every change is audited.

It wires the ports together (store, key stores, clock) and owns no state of its own beyond
caches that the store's change token keeps honest.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys._crashpoints import crash_point
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import (
    AuditEvent,
    AuditQuery,
    AuditRecord,
    ChainVerification,
    EventType,
    verify_chain,
)
from stellakeys.audit_replay import AuditReplay
from stellakeys.binding import (
    payload_facts,
)
from stellakeys.ceremony.authorization import CeremonyAuthorizer
from stellakeys.ceremony.ports import Authorization
from stellakeys.clock import Clock, SystemClock
from stellakeys.config import Settings, load_settings
from stellakeys.crypto import Algorithm, get_algorithm, load_public_key_pem
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.errors import (
    ConflictError,
    KeyIdentityError,
    KeyStoreError,
    MalformedPurlError,
    NotFoundError,
    PolicyError,
)
from stellakeys.intents import INTENT_GENERATE, INTENT_ROTATE, KeyIntent
from stellakeys.intoto import PAYLOAD_TYPE as INTOTO_PAYLOAD_TYPE
from stellakeys.key_lifecycle import (
    begin_intent,
    check_handle,
    obtain_key,
    verify_own_signatures,
)
from stellakeys.keys import KeyOrigin, KeyRecord
from stellakeys.keystores.ports import KeyHandle, KeyStore, KeyStoreContext
from stellakeys.limits import (
    MAX_POLICY_VERSION,
    MAX_PURL_PATTERN,
    MAX_REASON,
    check_key_id,
    check_list_size,
    check_predicate_types,
    check_text,
)
from stellakeys.profiles import KeyProfile, SignerConfig
from stellakeys.purl import (
    PurlPattern,
    overlaps_ambiguously,
)
from stellakeys.revocation import RevocationReason, parse_reason
from stellakeys.rotation import RotationWarning, rotation_warnings
from stellakeys.storage.ports import ProofRecord, Store, Transaction
from stellakeys.store_source import StoreSource
from stellakeys.times import format_time
from stellakeys.verification import (
    SigningTime,
    VerificationPolicy,
    VerificationResult,
    key_wide_compromises,
)
from stellakeys.verifier import Verifier

if TYPE_CHECKING:
    from stellakeys.timestamp import AddedTimestamp, TimestampingConfig, TimestampVerifier

#: Operation names given to the authorizer; they are the ceremony types of the dual-control
#: runbook (stellakeys.ceremony.operations names the same ones).
OP_HSM_KEY_GENERATION = "hsm-key-generation"
OP_KEY_GENERATION = "key-generation"
OP_KEY_REVOCATION = "key-revocation"
OP_KEY_ROTATION = "key-rotation"
OP_TRUST_ANCHOR_UPDATE = "trust-anchor-update"

__all__ = ["ALL_ANCHORS", "AnchorKeyValidity", "AnchorStatus", "KeyManager", "KeyValidity"]

#: The anchor id that means "every anchor holding the key" (emergency revocation).
ALL_ANCHORS = "ALL"


@attrs.frozen
class AnchorKeyValidity:
    anchor_id: uuid.UUID
    purl_pattern: str
    valid: bool
    entry: KeyHistoryEntry

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchorId": str(self.anchor_id),
            "purlPattern": self.purl_pattern,
            "valid": self.valid,
            **self.entry.to_dict(),
        }


@attrs.frozen
class KeyValidity:
    """Whether a key was valid at a time, per anchor it belongs to."""

    key_id: str
    at: datetime
    anchors: tuple[AnchorKeyValidity, ...]

    @property
    def valid(self) -> bool:
        return any(a.valid for a in self.anchors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "atTime": format_time(self.at),
            "valid": self.valid,
            "anchors": [a.to_dict() for a in self.anchors],
        }


@attrs.frozen
class AnchorStatus:
    """The runbook's ``anchor status``: active keys and how the anchor's stored proofs fare.

    ``pending_rescans`` counts stored proofs under this anchor that were signed by a key later
    revoked for compromise and carry no trusted timestamp: the proofs an incident review must
    look at again (the runbook's post-incident step 1).
    """

    anchor: TrustAnchor
    at: datetime
    proofs_total: int
    proofs_verified: int
    pending_rescans: int

    @property
    def success_rate(self) -> float | None:
        return self.proofs_verified / self.proofs_total if self.proofs_total else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.success_rate
        return {
            "anchor": str(self.anchor.anchor_id),
            "purlPattern": self.anchor.purl_pattern,
            "active": self.anchor.active,
            "activeKeys": list(self.anchor.allowed_keyids(self.at)),
            "revokedKeys": list(self.anchor.revoked_keys(self.at)),
            "proofs": self.proofs_total,
            "verificationSuccessRate": rate,
            "pendingRescans": self.pending_rescans,
        }


#: Patterns are immutable and anchors few compared with lookups: parse each pattern text once.
_pattern = functools.lru_cache(maxsize=65536)(PurlPattern.parse)


def _subject_purls(envelope: Envelope) -> list[str]:
    """The PURL subject names of a well-formed in-toto payload; none otherwise."""
    facts = payload_facts(envelope)
    return [n for n in facts.subjects if n.startswith("pkg:")] if facts.error is None else []


class KeyManager:
    """Generate, import, anchor, rotate, revoke, sign and verify, with an audit trail.

    Build one with :meth:`open` (home directory, signer.yaml, SQLite or PostgreSQL) or directly
    from a store, a config and a clock (tests, embedding applications).
    """

    def __init__(
        self,
        store: Store,
        *,
        config: SignerConfig | None = None,
        clock: Clock | None = None,
        actor: str = "stellakeys",
        keystore_context: KeyStoreContext | None = None,
        open_key_store: Callable[[str, KeyStoreContext], KeyStore] | None = None,
        authorizer: CeremonyAuthorizer | None = None,
        timestamp_verifier: TimestampVerifier | None = None,
        on_key_lookup: Callable[[], None] | None = None,
    ) -> None:
        """``timestamp_verifier`` checks RFC 3161 tokens (default: built from the settings'
        ``timestamping.tsaRoots`` on first use); ``on_key_lookup`` is called once per
        verification (metrics)."""
        self.store = store
        self.config = config or SignerConfig.from_dict(None)
        self.clock: Clock = clock or SystemClock()
        self.actor = actor
        self._ks_context = keystore_context or KeyStoreContext(home=Path.cwd())
        if open_key_store is None:
            from stellakeys.keystores import open_key_store as default_opener

            open_key_store = default_opener
        self._open_key_store = open_key_store
        self._key_stores: dict[str, KeyStore] = {}
        self._handles: dict[str, KeyHandle] = {}
        self._ks_lock = threading.Lock()
        #: Anchors and keys for verification, from the store (cached per PURL).
        self._source = StoreSource(store)
        #: Verifies RFC 3161 tokens. When None, it is built on first use from the
        #: ``timestamping`` section of the settings (``tsaRoots``); with no roots anywhere,
        #: tokens give no trusted time (verification says so).
        self.timestamp_verifier: TimestampVerifier | None = timestamp_verifier
        #: Every verification goes through this object (docs/verification.md).
        self.verifier = Verifier(self._source, self._source, on_verify=on_key_lookup)
        #: Asked inside the write transaction of every protected operation, with the
        #: operation's explicit ``authorization`` (an executing ceremony) or None. It raises to
        #: refuse, or records the ceremony's execution in that same transaction, so an
        #: operation and "ceremony executed" commit together or not at all. The default one
        #: has no ceremony configuration of its own: the store's recorded policy still holds.
        self.authorizer = authorizer or CeremonyAuthorizer()

    @classmethod
    def open(
        cls,
        home: str | Path | None = None,
        *,
        config_path: str | Path | None = None,
        database_url: str | None = None,
        actor: str | None = None,
        clock: Clock | None = None,
        prompt: Callable[[str], str] | None = None,
        timestamp_verifier: TimestampVerifier | None = None,
        on_key_lookup: Callable[[], None] | None = None,
    ) -> KeyManager:
        settings = load_settings(home, config_path, database_url, actor)
        return cls.from_settings(
            settings,
            clock=clock,
            prompt=prompt,
            timestamp_verifier=timestamp_verifier,
            on_key_lookup=on_key_lookup,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        prompt: Callable[[str], str] | None = None,
        timestamp_verifier: TimestampVerifier | None = None,
        on_key_lookup: Callable[[], None] | None = None,
    ) -> KeyManager:
        """Every collaborator is given here: the clock, the key store prompt, the timestamp
        verifier (default: from ``timestamping.tsaRoots``) and the verification hook."""
        from stellakeys.storage import open_store

        store = open_store(settings)
        # Protected operations are gated from the first call on: the authorizer applies the
        # store's recorded policy, made stricter (never weaker) by this configuration.
        authorizer = CeremonyAuthorizer.from_settings(settings)
        manager = cls(
            store,
            config=settings.signer,
            clock=clock,
            actor=settings.actor,
            keystore_context=KeyStoreContext(home=settings.home, prompt=prompt),
            authorizer=authorizer,
            timestamp_verifier=timestamp_verifier,
            on_key_lookup=on_key_lookup,
        )
        manager.settings = settings
        if authorizer.config.enabled:
            # Store initialisation: the first process configured for dual control records
            # it in the store (a no-op when the store's policy is already as strict).
            with store.read() as tx:
                recorded = bool(tx.ceremony_policy_versions())
            if not recorded:
                with store.transaction() as tx:
                    authorizer.record_configured_policy(tx, manager.actor, manager._now())
        return manager

    settings: Settings | None = None

    def close(self) -> None:
        with self._ks_lock:
            for ks in self._key_stores.values():
                ks.close()
            self._key_stores.clear()
            self._handles.clear()
        self.store.close()

    def __enter__(self) -> KeyManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock.now()

    def _audit(self, tx: Transaction, event_type: str, **fields: Any) -> AuditEvent:
        return tx.append_audit(
            AuditRecord(event_type=event_type, actor=self.actor, timestamp=self._now(), **fields)
        )

    def _guard(
        self,
        tx: Transaction,
        operation: str,
        details: dict[str, Any],
        authorization: Authorization | None,
    ) -> str | None:
        """Ask the authorizer inside the operation's write transaction; returns the id of
        the authorising ceremony, which every audit event of the operation names (``stellaops
        audit verify`` checks that each protected change says which ceremony allowed it)."""
        return self.authorizer.authorize(tx, operation, details, authorization, now=self._now())

    def _preflight(
        self, operation: str, details: dict[str, Any], authorization: Authorization | None
    ) -> None:
        """Ask before doing anything expensive or external (key generation)."""
        with self.store.read() as tx:
            self.authorizer.authorize(
                tx, operation, details, authorization, now=self._now(), preflight=True
            )

    def _key_store(self, uri: str) -> KeyStore:
        base = uri.split("#", 1)[0]
        with self._ks_lock:
            store = self._key_stores.get(base)
            if store is None:
                store = self._open_key_store(uri, self._ks_context)
                self._key_stores[base] = store
            return store

    def _handle(self, record: KeyRecord) -> KeyHandle:
        if record.key_store_uri is None:
            raise KeyStoreError(
                f"key {record.key_id} was imported as a public key: it can verify, not sign"
            )
        with self._ks_lock:
            handle = self._handles.get(record.key_store_uri)
        if handle is None:
            handle = self._open_pinned(record, record.key_store_uri)
            # Checked when opened (here) and again before every signature (sign): the store's
            # key is evidence, the record is the truth (decision 0016).
            check_handle(record, handle, f"key store {record.key_store_uri}")
            with self._ks_lock:
                self._handles[record.key_store_uri] = handle
        return handle

    def _open_pinned(self, record: KeyRecord, pinned: str) -> KeyHandle:
        """Open a pinned key through its profile's store object when it lives there, so one
        store (one passphrase or PIN prompt, one HSM login) serves every key of a profile."""
        profile = self.config.profiles.get(record.profile) if record.profile else None
        if profile is not None and _store_family(profile.key_store) == _store_family(pinned):
            try:
                return self._key_store(profile.key_store).open(pinned)
            except KeyStoreError:
                pass  # the profile now points elsewhere; the pinned URI still names the key
        return self._key_store(pinned).open(pinned)

    # --- keys -----------------------------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord:
        with self.store.read() as tx:
            record = tx.get_key(key_id)
        if record is None:
            raise NotFoundError(f"no key {key_id!r}")
        return record

    def list_keys(self) -> list[KeyRecord]:
        with self.store.read() as tx:
            return tx.list_keys()

    def _profile_algorithm(
        self, profile: str, algorithm: str | None
    ) -> tuple[KeyProfile, Algorithm]:
        prof = self.config.profile(profile)
        alg = get_algorithm(algorithm or prof.algorithm)
        if alg.id != prof.algorithm:
            raise PolicyError(
                f"profile {profile!r} uses {prof.algorithm}; --algorithm {algorithm} differs"
            )
        return prof, alg

    def _generate_in_store(
        self,
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
            self.store,
            KeyIntent(
                key_id, operation, prof.name, alg.id, prof.key_store, self._now(), params or {}
            ),
        )
        handle = obtain_key(self.store, self._key_store(prof.key_store), intent, alg)
        public = handle.public_key()
        record = KeyRecord(
            key_id=key_id,
            algorithm=alg.id,
            public_key_pem=public.to_pem(),
            fingerprint=public.fingerprint,
            created_at=self._now(),
            profile=prof.name,
            key_store_uri=handle.uri,
            origin=KeyOrigin.GENERATED,
        )
        return handle, record

    def _insert_generated(
        self, tx: Transaction, record: KeyRecord, ceremony_id: str | None, **details: Any
    ) -> None:
        tx.insert_key(record)
        tx.delete_intent(record.key_id)
        self._audit(
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
        self,
        key_id: str,
        profile: str = "default",
        algorithm: str | None = None,
        *,
        authorization: Authorization | None = None,
    ) -> KeyRecord:
        """A new key in the profile's key store, recorded with its pinned URI and public key.

        An HSM profile's key generation is protected by dual control when the policy in force
        says so: pass the executing ceremony's ``authorization`` (the ceremony service does).
        """
        _check_key_id(key_id)
        prof, alg = self._profile_algorithm(profile, algorithm)
        operation = OP_HSM_KEY_GENERATION if _is_hsm(prof.key_store) else OP_KEY_GENERATION
        guard_details: dict[str, Any] = {
            "keyId": key_id,
            "profile": prof.name,
            "keyStore": prof.key_store,
            "algorithm": alg.id,
        }
        self._preflight(operation, guard_details, authorization)
        with self.store.read() as tx:
            if tx.get_key(key_id) is not None:
                raise ConflictError(f"key {key_id!r} already exists")
        handle, record = self._generate_in_store(prof, alg, key_id)
        with self.store.transaction() as tx:
            cid = self._guard(
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
            self._insert_generated(tx, record, cid)
            crash_point("before-commit")  # test-only (stellakeys._crashpoints)
        crash_point("committed")
        with self._ks_lock:
            self._handles[handle.uri] = handle
        return record

    def rotate_key(
        self,
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
        """The key rotation runbook's steps 1, 2 and (scheduled) 4 as one atomic change.

        Generates ``key_id`` in the profile's key store, adds it to ``anchor_ids`` (or, when
        none are given and ``replaces`` is, to every active anchor where the replaced key is
        still valid) and, if ``revoke_replaced_at`` is given, revokes the replaced key there
        from that time (usually the end of the transition period). Everything after key
        generation commits in one transaction, which is what lets a dual-control ceremony
        execute a rotation exactly once (operation ``key-rotation``; pass the executing
        ceremony's ``authorization`` when dual control protects it).
        """
        _check_key_id(key_id)
        if revoke_replaced_at is not None and replaces is None:
            raise PolicyError("revoke_replaced_at needs the key being replaced")
        if revoke_replaced_at is not None and not revoke_reason.strip():
            raise PolicyError("a revocation needs a reason")
        reason = parse_reason(revoke_reason)
        prof, alg = self._profile_algorithm(profile, algorithm)
        requested = [str(_anchor_uuid(a)) for a in dict.fromkeys(anchor_ids)]
        guard_details: dict[str, Any] = {
            "keyId": key_id,
            "profile": prof.name,
            "keyStore": prof.key_store,
            "algorithm": alg.id,
            "anchorIds": requested,
            "replacesKeyId": replaces,
            "revokeReplacedAt": format_time(revoke_replaced_at) if revoke_replaced_at else None,
        }
        self._preflight(OP_KEY_ROTATION, guard_details, authorization)
        with self.store.read() as tx:
            if tx.get_key(key_id) is not None:
                raise ConflictError(f"key {key_id!r} already exists")
            if replaces is not None:
                self._require_key(tx, replaces)
        handle, record = self._generate_in_store(
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
        with self.store.transaction() as tx:
            if requested:
                targets = [self._targets(tx, a, for_add=True)[0] for a in requested]
            elif replaces is not None:
                targets = [
                    a
                    for a in tx.list_anchors(active_only=True)
                    if (e := a.entry(replaces)) is not None and e.valid_at(now)
                ]
            else:
                targets = []
            cid = self._guard(
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
            self._insert_generated(tx, record, cid, replaces=replaces)
            for anchor in targets:
                tx.insert_history(_entry(anchor.anchor_id, record, now))
                self._audit(
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
                self._record_revocation(
                    tx, old, old.revoke(revoke_replaced_at, reason), now, cid, replacedBy=key_id
                )
            if reason.is_compromise and revoke_replaced_at is not None and replaces is not None:
                # Compromise is a fact about the key: every other anchor holding it too.
                done = {a.anchor_id for a in targets}
                for other in tx.history_of_key(replaces):
                    if other.anchor_id not in done:
                        self._record_revocation(
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
        with self._ks_lock:
            self._handles[handle.uri] = handle
        return record

    def import_key(self, key_id: str, public_key_pem: str, profile: str | None = None) -> KeyRecord:
        """Record an external public key (verification only)."""
        _check_key_id(key_id)
        public = load_public_key_pem(public_key_pem)
        if profile is not None:
            self.config.profile(profile)
        record = KeyRecord(
            key_id=key_id,
            algorithm=public.algorithm.id,
            public_key_pem=public.to_pem(),
            fingerprint=public.fingerprint,
            created_at=self._now(),
            profile=profile,
            key_store_uri=None,
            origin=KeyOrigin.IMPORTED,
        )
        with self.store.transaction() as tx:
            tx.insert_key(record)
            self._audit(
                tx,
                EventType.KEY_IMPORTED,
                key_id=key_id,
                details={"algorithm": record.algorithm, "fingerprint": record.fingerprint},
            )
        return record

    def check_validity(self, key_id: str, at: datetime | None = None) -> KeyValidity:
        when = at or self._now()
        with self.store.read() as tx:
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

    def rotation_warnings(self, at: datetime | None = None) -> list[RotationWarning]:
        """Rotation status of every key still in use (not revoked in every anchor it is in)."""
        now = at or self._now()
        with self.store.read() as tx:
            keys = tx.list_keys()
            retired = {
                k.key_id
                for k in keys
                if (h := tx.history_of_key(k.key_id)) and all(e.is_revoked_at(now) for e in h)
            }
        return rotation_warnings((k for k in keys if k.key_id not in retired), self.config, now)

    # --- trust anchors ----------------------------------------------------------------------

    def create_anchor(
        self,
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
        now = self._now()
        new_id = anchor_id or uuid.uuid4()
        with self.store.transaction() as tx:
            cid = self._guard(
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
                other_pattern = _pattern(other.purl_pattern)
                if other_pattern.text == pattern.text or overlaps_ambiguously(
                    pattern, other_pattern
                ):
                    raise ConflictError(
                        f"pattern {pattern.text!r} ties with anchor {other.anchor_id}"
                        f" ({other.purl_pattern!r}) on the same artifacts"
                    )
            history = tuple(
                _entry(new_id, self._require_key(tx, k), now) for k in dict.fromkeys(key_ids)
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
            self._audit(
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
                self._audit(
                    tx,
                    EventType.KEY_ADDED,
                    key_id=e.key_id,
                    anchor_id=new_id,
                    ceremony_id=cid,
                    details={"addedAt": format_time(e.added_at)},
                )
        return anchor

    def get_anchor(self, anchor_id: uuid.UUID | str) -> TrustAnchor:
        aid = _anchor_uuid(anchor_id)
        with self.store.read() as tx:
            anchor = tx.get_anchor(aid)
        if anchor is None:
            raise NotFoundError(f"no trust anchor {aid}")
        return anchor

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        with self.store.read() as tx:
            return tx.list_anchors(active_only=active_only)

    def find_anchor(self, purl: str) -> TrustAnchor | None:
        """The one anchor that applies to an artifact PURL, if any."""
        return self._source.lookup(purl).anchor

    def deactivate_anchor(
        self, anchor_id: uuid.UUID | str, *, authorization: Authorization | None = None
    ) -> TrustAnchor:
        aid = _anchor_uuid(anchor_id)
        with self.store.transaction() as tx:
            cid = self._guard(
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
            self._audit(
                tx,
                EventType.ANCHOR_DEACTIVATED,
                anchor_id=aid,
                ceremony_id=cid,
                details={"purlPattern": anchor.purl_pattern},
            )
        return attrs.evolve(anchor, active=False)

    def add_key(
        self,
        anchor_id: uuid.UUID | str,
        key_id: str,
        added_at: datetime | None = None,
        *,
        authorization: Authorization | None = None,
    ) -> list[uuid.UUID]:
        """Add a key to one anchor, or to every active anchor (``ALL``) that lacks it."""
        when = added_at or self._now()
        changed: list[uuid.UUID] = []
        with self.store.transaction() as tx:
            cid = self._guard(
                tx,
                OP_TRUST_ANCHOR_UPDATE,
                {"action": "add-key", "anchorId": str(anchor_id), "keyId": key_id},
                authorization,
            )
            record = self._require_key(tx, key_id)
            for anchor in self._targets(tx, anchor_id, for_add=True):
                if anchor.entry(key_id) is not None:
                    if anchor_id == ALL_ANCHORS:
                        continue
                    raise ConflictError(f"key {key_id} is already in anchor {anchor.anchor_id}")
                tx.insert_history(_entry(anchor.anchor_id, record, when))
                self._audit(
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
        self,
        anchor_id: uuid.UUID | str,
        key_id: str,
        reason: str | RevocationReason,
        effective_at: datetime | None = None,
        *,
        authorization: Authorization | None = None,
    ) -> list[uuid.UUID]:
        """Revoke a key in one anchor or in every anchor holding it (``ALL``).

        ``reason`` is a word of :class:`~stellakeys.revocation.RevocationReason` (or an alias
        such as ``keyCompromise``); anything else raises UnknownRevocationReasonError.
        ``effective_at`` may be past, now (None) or future (a scheduled revocation). Proofs
        signed before it keep verifying, except for reason ``compromise``, which then needs
        trusted time. An existing revocation can be made earlier or given a stronger reason,
        never postponed or weakened. Compromise is a fact about the key: it is recorded in
        every anchor holding the key (active or not), whichever anchor was named. Returns the
        anchors whose entry changed.
        """
        if isinstance(reason, str):
            if not reason.strip():
                raise PolicyError("a revocation needs a reason")
            check_text(reason, "a revocation reason", MAX_REASON)
        parsed = parse_reason(reason)
        now = self._now()
        when = effective_at or now
        changed: list[uuid.UUID] = []
        with self.store.transaction() as tx:
            cid = self._guard(
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
            self._require_key(tx, key_id)
            named = [a for a in self._targets(tx, anchor_id, for_add=False) if a.entry(key_id)]
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
                self._record_revocation(tx, entry, revoked, now, cid, **extra)
                changed.append(anchor.anchor_id)
        return changed

    def _record_revocation(
        self,
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
        self._audit(
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

    def anchor_status(self, anchor_id: uuid.UUID | str) -> AnchorStatus:
        anchor = self.get_anchor(anchor_id)
        now = self._now()
        pattern = PurlPattern.parse(anchor.purl_pattern)
        total = verified = rescans = 0
        with self.store.read() as tx:
            proofs = list(tx.iter_proofs())
            # Key-wide: a key compromised in another anchor is compromised here too.
            found = key_wide_compromises(
                tx.history_by_fingerprints({e.fingerprint for e in anchor.key_history})
            )
        compromised = {e.key_id for e in anchor.key_history if e.fingerprint in found}
        for proof in proofs:
            envelope = Envelope.from_json(proof.envelope_json)
            purls = _subject_purls(envelope)
            purl = next((p for p in purls if _safe_match(pattern, p)), None)
            if purl is None:
                continue
            total += 1
            result = self.verify(
                envelope, purl=purl, at=proof.created_at, timestamps=proof.timestamp_tokens
            )
            verified += result.ok
            signers = {s.keyid for s in envelope.signatures}
            if signers & compromised and not proof.timestamp_tokens:
                rescans += 1
        return AnchorStatus(anchor, now, total, verified, rescans)

    def _require_key(self, tx: Transaction, key_id: str) -> KeyRecord:
        record = tx.get_key(key_id)
        if record is None:
            raise NotFoundError(f"no key {key_id!r}")
        return record

    def _targets(
        self, tx: Transaction, anchor_id: uuid.UUID | str, *, for_add: bool
    ) -> list[TrustAnchor]:
        if anchor_id == ALL_ANCHORS:
            # Emergency revocation reaches inactive anchors too: their proofs are still
            # verified by forensics, and a stolen key must not stay trusted there.
            return tx.list_anchors(active_only=for_add)
        aid = _anchor_uuid(anchor_id)
        anchor = tx.get_anchor(aid)
        if anchor is None:
            raise NotFoundError(f"no trust anchor {aid}")
        if for_add and not anchor.active:
            raise ConflictError(f"trust anchor {aid} is inactive")
        return [anchor]

    # --- proofs: sign and verify ------------------------------------------------------------

    def sign(
        self,
        payload: bytes,
        key_ids: Sequence[str] | str,
        payload_type: str = INTOTO_PAYLOAD_TYPE,
        *,
        timestamp_url: str | None = None,
        within: Callable[[Transaction, str], None] | None = None,
    ) -> str:
        """Sign with one or several keys (any mix of algorithms); returns ``sha256:<hex>``.

        ``timestamp_url``: get an RFC 3161 token for every signature from that TSA before
        anything is stored, so the proof is stored with its trusted time or not at all.
        ``within(tx, digest)`` runs in the transaction that stores the proof, after storing
        it; if it raises, nothing is stored (the feed records its version number this way).
        """
        ids = [key_ids] if isinstance(key_ids, str) else list(dict.fromkeys(key_ids))
        if not ids:
            raise PolicyError("at least one key id is required to sign")
        now = self._now()
        with self.store.read() as tx:
            records = [self._require_key(tx, k) for k in ids]
            for r in records:
                _check_signable(r, tx.history_of_key(r.key_id), now)
        handles = [self._handle(r) for r in records]
        for r, h in zip(records, handles, strict=True):
            check_handle(r, h, f"key store {h.uri}")  # a cached handle too, before it signs
        envelope = sign_envelope(payload_type, payload, handles, ids)
        try:
            # Before anything is stored or returned (decision 0016): catches a store that
            # signs with another key than it reports, and faulty signatures.
            verify_own_signatures(envelope, records, handles)
        except KeyIdentityError:
            with self._ks_lock:
                for r in records:
                    self._handles.pop(r.key_store_uri or "", None)
            raise
        digest = envelope.digest()
        stamps = self._request_timestamps(envelope, timestamp_url) if timestamp_url else []
        with self.store.transaction() as tx:
            tx.put_proof(ProofRecord(digest, envelope.to_json(), now))
            if within is not None:
                within(tx, digest)
            for key_id in ids:
                self._audit(
                    tx,
                    EventType.PROOF_SIGNED,
                    key_id=key_id,
                    details={"proof": digest, "payloadType": payload_type},
                )
            self._store_timestamps(tx, digest, stamps)
        return digest

    def get_proof(self, digest: str) -> Envelope:
        return Envelope.from_json(self._proof_record(digest).envelope_json)

    def _proof_record(self, digest: str) -> ProofRecord:
        with self.store.read() as tx:
            proof = tx.get_proof(digest)
        if proof is None:
            raise NotFoundError(f"no proof {digest}")
        return proof

    # --- proofs: trusted time (RFC 3161) --------------------------------------------------------

    def timestamping(self) -> TimestampingConfig:
        """The ``timestamping`` section of the settings (TSA roots, default TSA URL)."""
        from stellakeys.timestamp import TimestampingConfig

        if self.settings is None:
            return TimestampingConfig()
        return TimestampingConfig.from_document(self.settings.document, self.settings.home)

    def _tsa_verifier(self) -> TimestampVerifier | None:
        # Built lazily (reading the roots costs file I/O that most verifications never need).
        if self.timestamp_verifier is None:
            self.timestamp_verifier = self.timestamping().verifier()
        return self.timestamp_verifier

    def proof_timestamps(self, digest: str) -> tuple[bytes, ...]:
        """The DER tokens stored with a proof; empty when the proof is not stored."""
        with self.store.read() as tx:
            proof = tx.get_proof(digest)
        return proof.timestamp_tokens if proof is not None else ()

    def timestamp_proof(
        self,
        digest: str,
        *,
        tsa_url: str | None = None,
        tokens: Sequence[bytes] = (),
        verifier: TimestampVerifier | None = None,
    ) -> list[AddedTimestamp]:
        """Store RFC 3161 tokens with a proof: given ``tokens`` (DER TimeStampResp or bare
        TimeStampToken) and/or one per signature from the TSA at ``tsa_url``.

        Each token must cover one of the proof's signatures and, when TSA roots are
        configured (or ``verifier`` is given), verify; otherwise TimestampError and nothing
        is stored. Without roots the tokens are stored unverified, to be judged when verified.
        """
        from stellakeys.errors import TimestampError
        from stellakeys.timestamp import AddedTimestamp, parse_token

        if not tsa_url and not tokens:
            raise TimestampError("nothing to add: give a TSA URL or a token")
        envelope = self.get_proof(digest)
        verifier = verifier or self._tsa_verifier()
        added: list[AddedTimestamp] = []
        for der in tokens:
            token = parse_token(der)
            covered = [i for i, s in enumerate(envelope.signatures) if token.covers(s.sig)]
            if not covered:
                raise TimestampError(
                    f"the token ({token.describe()}) covers none of the signatures of {digest}"
                )
            if verifier is not None:
                checked = verifier.verify(token, envelope.signatures[covered[0]].sig)
                if not checked.ok:
                    raise TimestampError(f"the token does not verify: {checked.failure}")
            keyid = envelope.signatures[covered[0]].keyid
            added.append(AddedTimestamp(covered[0], keyid, token, verifier is not None))
        if tsa_url:
            added.extend(self._request_timestamps(envelope, tsa_url, verifier))
        with self.store.transaction() as tx:
            self._store_timestamps(tx, digest, added)
        return added

    def _request_timestamps(
        self, envelope: Envelope, url: str, verifier: TimestampVerifier | None = None
    ) -> list[AddedTimestamp]:
        """One token per signature from the TSA at ``url`` (network; outside transactions)."""
        from stellakeys.timestamp import AddedTimestamp, request_timestamp

        config = self.timestamping()
        verifier = verifier or self._tsa_verifier()
        out: list[AddedTimestamp] = []
        for index, signature in enumerate(envelope.signatures):
            token = request_timestamp(
                url,
                signature.sig,
                hash_algorithm=config.hash_algorithm,
                timeout=config.timeout,
                verifier=verifier,
            )
            out.append(
                AddedTimestamp(index, signature.keyid, token, verifier is not None, tsa_url=url)
            )
        return out

    def _store_timestamps(
        self, tx: Transaction, digest: str, added: Sequence[AddedTimestamp]
    ) -> None:
        for stamp in added:
            tx.add_proof_timestamp(digest, stamp.token.der)
            self._audit(
                tx,
                EventType.PROOF_TIMESTAMPED,
                key_id=stamp.keyid,
                details={"proof": digest, **stamp.to_dict()},
            )

    def verify(
        self,
        proof: Envelope | str | bytes,
        *,
        purl: str | None = None,
        at: datetime | None = None,
        trusted_time: SigningTime | None = None,
        policy: VerificationPolicy | None = None,
        timestamps: Sequence[bytes] = (),
        timestamp_verifier: TimestampVerifier | None = None,
        now: datetime | None = None,
    ) -> VerificationResult:
        """Verify a proof (an envelope, its JSON, or a stored ``sha256:`` digest).

        The time is ``trusted_time`` when given (a verified timestamp), else ``at`` (asserted),
        else now. The artifact is ``purl`` when given, and it must be one of the statement's
        subjects; else every subject of the in-toto statement is judged against its own
        anchor (``result.subjects``). A payload that names no artifact gets a key-only check
        when the policy allows it (``result.key_only``). See docs/verification.md.

        RFC 3161 tokens (the ones stored with the proof when it is given by its ``sha256:``
        address, plus ``timestamps``) give the signatures they cover their own trusted time,
        which wins over ``at`` and now; see docs/trusted-time.md. Malformed tokens raise
        TimestampError; tokens that do not verify are reasons or notes in the result.

        ``now`` (default: the manager's clock) is the time when none is asserted (batch
        verification judges a whole batch at one instant). The work is :attr:`verifier`'s.
        """
        envelope, digest, tokens = self.proof_with_tokens(proof, timestamps)
        return self.verifier.verify(
            envelope,
            purl=purl,
            at=at,
            now=now if now is not None else self._now(),
            policy=policy or VerificationPolicy(),
            tokens=tokens,
            trusted_time=trusted_time,
            digest=digest,
            timestamp_verifier=(timestamp_verifier or self._tsa_verifier()) if tokens else None,
        )

    def proof_with_tokens(
        self, proof: Envelope | str | bytes, extra: Sequence[bytes] = ()
    ) -> tuple[Envelope, str | None, tuple[bytes, ...]]:
        """The envelope of ``proof``, its ``sha256:`` address when given by it, and the RFC
        3161 tokens that go with it: those stored with the proof, then ``extra``.

        A proof given by address brings its stored tokens in the same read. An envelope given
        as such is not looked up: that would cost the hot path a read per proof; callers that
        want its stored tokens use :meth:`stored_tokens_for`.
        """
        if isinstance(proof, str) and proof.startswith("sha256:"):
            record = self._proof_record(proof)
            envelope = Envelope.from_json(record.envelope_json)
            return envelope, proof, (*record.timestamp_tokens, *extra)
        return self._envelope_of(proof), None, tuple(extra)

    def stored_tokens_for(
        self, proof: Envelope | str | bytes, extra: Sequence[bytes] = ()
    ) -> tuple[Envelope | str, tuple[bytes, ...]]:
        """The one place that merges stored timestamp tokens for a proof (``stellaops verify``
        and batch workers): a proof given by address keeps its address (``verify`` reads its
        tokens with it); an envelope gets the tokens stored under its digest, then ``extra``."""
        if isinstance(proof, str) and proof.startswith("sha256:"):
            return proof, tuple(extra)
        envelope = self._envelope_of(proof)
        return envelope, (*self.proof_timestamps(envelope.digest()), *extra)

    def _envelope_of(self, proof: Envelope | str | bytes) -> Envelope:
        if isinstance(proof, Envelope):
            return proof
        if isinstance(proof, str) and proof.startswith("sha256:"):
            return self.get_proof(proof)
        return Envelope.from_json(proof)

    # --- audit ----------------------------------------------------------------------------

    def audit_events(self, query: AuditQuery | None = None) -> list[AuditEvent]:
        with self.store.read() as tx:
            return tx.audit_events(query)

    def verify_audit(
        self, expected_head: str | None = None, *, check_state: bool = True
    ) -> ChainVerification:
        """Check the hash chain and (``check_state``) replay the events into the keys,
        anchors, key history and ceremony states they imply and compare that with the tables,
        all in one read transaction and one pass over the log. Every difference is listed in
        ``state_differences`` and makes the result not ok: a change made behind stellakeys'
        back (triggers dropped, a direct UPDATE) is detected even though no event changed."""
        with self.store.read() as tx:
            if not check_state:
                return verify_chain(tx.iter_audit(), expected_head)
            replay = AuditReplay()
            chain = verify_chain(replay.feed(tx.iter_audit()), expected_head)
            if chain.broken_at is not None:
                return chain
            differences = replay.compare(tx.list_keys(), tx.list_anchors(), tx.list_ceremonies())
        lines = tuple(d.describe() for d in differences)
        return attrs.evolve(
            chain, ok=chain.ok and not lines, state_differences=lines, state_checked=True
        )


def _entry(anchor_id: uuid.UUID, record: KeyRecord, added_at: datetime) -> KeyHistoryEntry:
    return KeyHistoryEntry(
        anchor_id=anchor_id,
        key_id=record.key_id,
        algorithm=record.algorithm,
        public_key_pem=record.public_key_pem,
        fingerprint=record.fingerprint,
        added_at=added_at,
    )


def _anchor_uuid(anchor_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(anchor_id, uuid.UUID):
        return anchor_id
    try:
        return uuid.UUID(anchor_id)
    except ValueError:
        raise NotFoundError(f"invalid trust anchor id {anchor_id!r}: expected a UUID") from None


def _check_key_id(key_id: str) -> None:
    # The same check a ceremony's payload passes at create (stellakeys.limits), so what a
    # ceremony accepts, execution can run.
    check_key_id(key_id)


def _check_signable(record: KeyRecord, history: list[KeyHistoryEntry], now: datetime) -> None:
    if any(e.compromised for e in history):
        raise PolicyError(f"key {record.key_id} was revoked for compromise; it cannot sign")
    if history and all(e.is_revoked_at(now) for e in history):
        raise PolicyError(f"key {record.key_id} is revoked in every anchor; it cannot sign")


def _store_family(uri: str) -> str:
    scheme = uri.split(":", 1)[0].lower()
    return "pkcs11" if scheme == "hsm" else scheme


def _is_hsm(key_store_uri: str) -> bool:
    return key_store_uri.startswith(("hsm:", "pkcs11:"))


def _safe_match(pattern: PurlPattern, purl: str) -> bool:
    try:
        return pattern.matches(purl)
    except MalformedPurlError:
        return False

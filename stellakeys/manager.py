"""KeyManager: the facade through which every change goes, so every change is audited.

It wires the ports together (store, key stores, clock) and owns no state of its own beyond
caches that the store's change token keeps honest.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stellakeys.manager_anchors as manager_anchors
import stellakeys.manager_keys as manager_keys
import stellakeys.manager_proofs as manager_proofs
import stellakeys.manager_values as manager_values
from stellakeys.anchors import TrustAnchor
from stellakeys.audit import AuditEvent, AuditQuery, AuditRecord, ChainVerification
from stellakeys.audit_replay import verify_store_audit
from stellakeys.ceremony.authorization import CeremonyAuthorizer
from stellakeys.ceremony.ports import Authorization
from stellakeys.clock import Clock, SystemClock
from stellakeys.config import Settings, load_settings
from stellakeys.crypto import Algorithm, get_algorithm
from stellakeys.dsse import Envelope
from stellakeys.errors import KeyStoreError, NotFoundError, PolicyError
from stellakeys.intoto import PAYLOAD_TYPE as INTOTO_PAYLOAD_TYPE
from stellakeys.key_lifecycle import check_handle
from stellakeys.keys import KeyRecord
from stellakeys.keystores.ports import KeyHandle, KeyStore, KeyStoreContext
from stellakeys.manager_values import (
    ALL_ANCHORS,
    AnchorKeyValidity,
    AnchorStatus,
    KeyValidity,
    anchor_uuid,
    store_family,
)
from stellakeys.profiles import KeyProfile, SignerConfig
from stellakeys.revocation import RevocationReason
from stellakeys.rotation import RotationWarning
from stellakeys.storage.ports import Store, Transaction
from stellakeys.store_verifier import StoreVerifier
from stellakeys.verification import SigningTime, VerificationPolicy, VerificationResult

if TYPE_CHECKING:
    from stellakeys.timestamp import AddedTimestamp, TimestampingConfig, TimestampVerifier

# The vocabulary moved to stellakeys.manager_values; still importable from here.
OP_HSM_KEY_GENERATION = manager_values.OP_HSM_KEY_GENERATION
OP_KEY_GENERATION = manager_values.OP_KEY_GENERATION
OP_KEY_REVOCATION = manager_values.OP_KEY_REVOCATION
OP_KEY_ROTATION = manager_values.OP_KEY_ROTATION
OP_TRUST_ANCHOR_UPDATE = manager_values.OP_TRUST_ANCHOR_UPDATE

__all__ = ["ALL_ANCHORS", "AnchorKeyValidity", "AnchorStatus", "KeyManager", "KeyValidity"]


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
        settings: Settings | None = None,
        owns_store: bool = True,
    ) -> None:
        """``timestamp_verifier``: RFC 3161 tokens (default: from ``settings``); ``on_key_lookup``
        is called once per verification; ``owns_store=False``: :meth:`close` leaves the store
        to its owner (a service sharing one store between per-identity managers)."""
        self.store = store
        self.settings = settings
        self._owns_store = owns_store
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
        self._timestamp_verifier: TimestampVerifier | None = timestamp_verifier
        #: Verification against the store (no clock: this facade gives ``now``); its TSA
        #: verifier is the given one, else built on first use from the settings.
        self._verifying = StoreVerifier(
            store,
            timestamp_verifier=timestamp_verifier,
            timestamp_verifier_factory=lambda: self.timestamping().verifier(),
            on_verify=on_key_lookup,
        )
        #: Every verification goes through this object (docs/verification.md).
        self.verifier = self._verifying.verifier
        #: Asked inside the write transaction of every protected operation with its explicit
        #: ``authorization`` (or None): it refuses, or records the ceremony's execution in
        #: that transaction. The default one applies only the store's recorded policy.
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
        max_staleness: float | None = None,
    ) -> KeyManager:
        settings = load_settings(home, config_path, database_url, actor, max_staleness)
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
            settings=settings,
        )
        if authorizer.config.enabled:
            # Store initialisation: the first process configured for dual control records
            # it in the store (a no-op when the store's policy is already as strict).
            with store.read() as tx:
                recorded = bool(tx.ceremony_policy_versions())
            if not recorded:
                with store.transaction() as tx:
                    authorizer.record_configured_policy(tx, manager.actor, manager._now())
        return manager

    @property
    def timestamp_verifier(self) -> TimestampVerifier | None:
        """The RFC 3161 verifier given at construction (None: built from the settings)."""
        return self._timestamp_verifier

    def close(self) -> None:
        with self._ks_lock:
            for ks in self._key_stores.values():
                ks.close()
            self._key_stores.clear()
            self._handles.clear()
        if self._owns_store:
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
        if profile is not None and store_family(profile.key_store) == store_family(pinned):
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
        return manager_keys.generate_key(
            self, key_id, profile, algorithm, authorization=authorization
        )

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
        return manager_keys.rotate_key(
            self,
            key_id,
            profile=profile,
            algorithm=algorithm,
            anchor_ids=anchor_ids,
            replaces=replaces,
            revoke_replaced_at=revoke_replaced_at,
            revoke_reason=revoke_reason,
            authorization=authorization,
        )

    def import_key(self, key_id: str, public_key_pem: str, profile: str | None = None) -> KeyRecord:
        """Record an external public key (verification only)."""
        return manager_keys.import_key(self, key_id, public_key_pem, profile)

    def check_validity(self, key_id: str, at: datetime | None = None) -> KeyValidity:
        return manager_keys.check_validity(self, key_id, at)

    def rotation_warnings(self, at: datetime | None = None) -> list[RotationWarning]:
        """Rotation status of every key still in use (not revoked in every anchor it is in)."""
        return manager_keys.rotation_warnings(self, at)

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
        return manager_anchors.create_anchor(
            self,
            purl_pattern,
            key_ids,
            predicate_types,
            policy_version,
            anchor_id,
            authorization=authorization,
        )

    def get_anchor(self, anchor_id: uuid.UUID | str) -> TrustAnchor:
        aid = anchor_uuid(anchor_id)
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
        return self._verifying.source.lookup(purl).anchor

    def deactivate_anchor(
        self, anchor_id: uuid.UUID | str, *, authorization: Authorization | None = None
    ) -> TrustAnchor:
        return manager_anchors.deactivate_anchor(self, anchor_id, authorization=authorization)

    def add_key(
        self,
        anchor_id: uuid.UUID | str,
        key_id: str,
        added_at: datetime | None = None,
        *,
        authorization: Authorization | None = None,
    ) -> list[uuid.UUID]:
        """Add a key to one anchor, or to every active anchor (``ALL``) that lacks it."""
        return manager_anchors.add_key(
            self, anchor_id, key_id, added_at, authorization=authorization
        )

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
        return manager_anchors.revoke_key(
            self, anchor_id, key_id, reason, effective_at, authorization=authorization
        )

    def anchor_status(self, anchor_id: uuid.UUID | str) -> AnchorStatus:
        return manager_anchors.anchor_status(self, anchor_id)

    def _require_key(self, tx: Transaction, key_id: str) -> KeyRecord:
        record = tx.get_key(key_id)
        if record is None:
            raise NotFoundError(f"no key {key_id!r}")
        return record

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

        Raises UnverifiablePayloadError, before any key signs, for a proof verification would
        always refuse: an in-toto ``payload_type`` (the default) over a payload that is not a
        valid in-toto Statement, or a Statement under another ``payload_type``.

        ``timestamp_url``: get an RFC 3161 token for every signature from that TSA before
        anything is stored, so the proof is stored with its trusted time or not at all.
        ``within(tx, digest)`` runs in the transaction that stores the proof, after storing
        it; if it raises, nothing is stored (the feed records its version number this way).
        """
        return manager_proofs.sign(
            self, payload, key_ids, payload_type, timestamp_url=timestamp_url, within=within
        )

    def get_proof(self, digest: str) -> Envelope:
        return Envelope.from_json(self._verifying.proof_record(digest).envelope_json)

    # --- proofs: trusted time (RFC 3161) --------------------------------------------------------

    def timestamping(self) -> TimestampingConfig:
        """The ``timestamping`` section of the settings (TSA roots, default TSA URL)."""
        from stellakeys.timestamp import TimestampingConfig

        if self.settings is None:
            return TimestampingConfig()
        return TimestampingConfig.from_document(self.settings.document, self.settings.home)

    def _tsa_verifier(self) -> TimestampVerifier | None:
        # Built lazily (reading the roots costs file I/O that most verifications never need).
        return self._verifying.timestamp_verifier()

    def proof_timestamps(self, digest: str) -> tuple[bytes, ...]:
        """The DER tokens stored with a proof; empty when the proof is not stored."""
        return self._verifying.proof_timestamps(digest)

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
        return manager_proofs.timestamp_proof(
            self, digest, tsa_url=tsa_url, tokens=tokens, verifier=verifier
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
        return self._verifying.verify(
            proof,
            now=now if now is not None else self._now(),
            purl=purl,
            at=at,
            trusted_time=trusted_time,
            policy=policy,
            timestamps=timestamps,
            timestamp_verifier=timestamp_verifier,
        )

    def proof_with_tokens(
        self, proof: Envelope | str | bytes, extra: Sequence[bytes] = ()
    ) -> tuple[Envelope, str | None, tuple[bytes, ...]]:
        """The envelope of ``proof``, its ``sha256:`` address when given by it, and the RFC
        3161 tokens that go with it (:meth:`StoreVerifier.proof_with_tokens
        <stellakeys.store_verifier.StoreVerifier.proof_with_tokens>`)."""
        return self._verifying.proof_with_tokens(proof, extra)

    def stored_tokens_for(
        self, proof: Envelope | str | bytes, extra: Sequence[bytes] = ()
    ) -> tuple[Envelope | str, tuple[bytes, ...]]:
        """A proof and every token that goes with it (:meth:`StoreVerifier.stored_tokens_for
        <stellakeys.store_verifier.StoreVerifier.stored_tokens_for>`)."""
        return self._verifying.stored_tokens_for(proof, extra)

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
        return verify_store_audit(self.store, expected_head, check_state=check_state)

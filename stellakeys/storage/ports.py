"""Storage ports. Every adapter (memory, SQLite, PostgreSQL) implements these and passes the
conformance suite in ``tests/storage_conformance.py``.

All reads and writes happen inside a :class:`Transaction`. A write transaction is atomic: when
the ``with`` block raises, nothing it wrote is kept. Write transactions on one store are
serialised (SQLite ``BEGIN IMMEDIATE``; row/advisory locks on PostgreSQL), which is what keeps
the audit hash chain a single line under concurrent writers.

Transactions do not nest: opening one while the same thread has one open raises StorageError
(rather than deadlocking). A :meth:`Store.read` transaction refuses writes with StorageError,
and a transaction object is unusable after its ``with`` block. Times must be timezone-aware
and come back as aware UTC; metadata and details must be JSON-compatible.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import attrs

from stellakeys.times import format_time

if TYPE_CHECKING:
    # Annotations only: a verification opens a store but never builds a ceremony, an intent
    # or an audit event, so their modules stay unloaded (issue 20, tests/test_cli_import_budget).
    from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
    from stellakeys.audit import AuditEvent, AuditQuery, AuditRecord, AuditRow
    from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState
    from stellakeys.ceremony.policy import PolicyVersion
    from stellakeys.intents import KeyIntent
    from stellakeys.keys import KeyRecord

__all__ = ["AuditStateRows", "FeedVersionRecord", "ProofRecord", "Store", "Transaction"]


@attrs.frozen
class ProofRecord:
    """A stored envelope, addressed by ``sha256:<hex>`` of its canonical JSON."""

    digest: str
    envelope_json: bytes
    created_at: datetime
    #: DER RFC 3161 timestamp tokens over the envelope's signatures (trusted-time issue).
    timestamp_tokens: tuple[bytes, ...] = ()


@attrs.frozen
class FeedVersionRecord:
    """One published version of the key-material feed: the stored proof that holds it.

    The store holds one document per version and no gaps (version N+1 only after N), so that
    of two concurrent publishers of N+1 exactly one can record it, in every process and on
    every host sharing the store (decision 0017).
    """

    version: int
    #: the proof address (``sha256:<hex>``) of the feed envelope
    digest: str
    published_at: datetime


@attrs.frozen
class AuditStateRows:
    """What ``audit verify`` compares with the state the log implies (stellakeys.audit_replay),
    read by :meth:`Transaction.audit_state_rows` as plain text rows: the fields compared and
    nothing else, no KeyRecord / TrustAnchor / KeyHistoryEntry built only to be turned back
    into text. :meth:`of` gives the same rows from the objects (the reference the conformance
    suite compares every adapter with).

    Times are ``format_time`` text, anchor ids canonical UUID text. Rows come in the order of
    ``list_keys`` / ``list_anchors`` (keys by created_at then id; anchors by created_at then id;
    history by anchor, added_at, key id) and the history of an anchor that does not exist is
    left out, as ``list_anchors`` leaves it out.
    """

    #: (key id, algorithm, fingerprint)
    keys: Sequence[tuple[str, str | None, str | None]]
    #: (anchor id, purl pattern, policy version, predicate types joined by ",", "true"/"false")
    anchors: Sequence[tuple[str, str | None, str | None, str, str]]
    #: (anchor id, key id, added at, revoked at, revoke reason, expires at, fingerprint)
    history: Sequence[tuple[str, str, str, str | None, str | None, str | None, str | None]]

    @classmethod
    def of(cls, keys: Iterable[KeyRecord], anchors: Iterable[TrustAnchor]) -> AuditStateRows:
        key_rows = [(k.key_id, k.algorithm, k.fingerprint) for k in keys]
        anchor_rows = []
        history = []
        for a in anchors:
            aid = str(a.anchor_id)
            anchor_rows.append(
                (
                    aid,
                    a.purl_pattern,
                    a.policy_version,
                    ",".join(a.allowed_predicate_types),
                    "true" if a.active else "false",
                )
            )
            history += [
                (
                    aid,
                    e.key_id,
                    format_time(e.added_at),
                    None if e.revoked_at is None else format_time(e.revoked_at),
                    e.revoke_reason,
                    None if e.expires_at is None else format_time(e.expires_at),
                    e.fingerprint,
                )
                for e in a.key_history
            ]
        return cls(key_rows, anchor_rows, history)


class Transaction(Protocol):
    # --- keys -------------------------------------------------------------------------------
    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def insert_key(self, record: KeyRecord) -> None:
        """Raise ConflictError if the key id exists."""
        ...

    def list_keys(self) -> list[KeyRecord]:
        """All keys, ordered by created_at then key_id."""
        ...

    # --- trust anchors and key history ------------------------------------------------------
    def get_anchor(self, anchor_id: uuid.UUID) -> TrustAnchor | None:
        """The anchor with its full key history (ordered by added_at, key_id)."""
        ...

    def insert_anchor(self, anchor: TrustAnchor, index_key: str) -> None:
        """Insert the anchor and its history entries. ``index_key`` is the pattern's storage
        index key (:func:`stellakeys.purl` ``PurlPattern.index_key``). ConflictError if the
        id exists."""
        ...

    def set_anchor_active(self, anchor_id: uuid.UUID, active: bool) -> None:
        """NotFoundError if there is no such anchor."""
        ...

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        """Anchors ordered by created_at then id, each with its history."""
        ...

    def anchors_by_index_keys(self, index_keys: Sequence[str]) -> list[TrustAnchor]:
        """Active anchors whose index key is one of ``index_keys``, using an index: this is
        the hot path of verification and must not scan all anchors. Ordered by created_at
        then id, each with its history."""
        ...

    def active_index_keys(self, limit: int) -> frozenset[str] | None:
        """The distinct index keys of the active anchors, or None when there are more than
        ``limit`` of them (verification then asks per key). With it, a PURL whose keys name
        no anchor costs no query at all."""
        ...

    def anchors_below_index_key(self, index_key: str) -> list[TrustAnchor]:
        """Active anchors whose index key continues ``index_key`` with ``/`` (patterns nested
        under it), same order as :meth:`anchors_by_index_keys`. With that method over a
        pattern's key chain, this gives every anchor a new pattern could tie with, without
        reading all anchors."""
        ...

    def insert_history(self, entry: KeyHistoryEntry) -> None:
        """ConflictError if (anchor_id, key_id) exists: a key joins an anchor once.
        NotFoundError if the anchor does not exist."""
        ...

    def update_history(self, entry: KeyHistoryEntry) -> None:
        """Replace revoked_at, revoke_reason, expires_at and metadata of the entry with the
        same (anchor_id, key_id). NotFoundError if there is none."""
        ...

    def history_of_key(self, key_id: str) -> list[KeyHistoryEntry]:
        """Every anchor membership of a key (emergency revocation, forensics), ordered by
        added_at then anchor_id."""
        ...

    def history_by_fingerprints(self, fingerprints: Collection[str]) -> list[KeyHistoryEntry]:
        """Every anchor membership of the public keys with these fingerprints, whatever key id
        they were recorded under, in active and inactive anchors alike; ordered by added_at,
        anchor_id, key_id. Verification uses it to apply a compromise recorded anywhere to
        the key everywhere (decision 0012)."""
        ...

    # --- proofs -----------------------------------------------------------------------------
    def put_proof(self, proof: ProofRecord) -> None:
        """Idempotent: storing the same digest twice keeps the first."""
        ...

    def get_proof(self, digest: str) -> ProofRecord | None: ...

    def add_proof_timestamp(self, digest: str, token: bytes) -> None:
        """Append a token (kept in insertion order; the same token twice is kept once).
        NotFoundError if there is no such proof."""
        ...

    def iter_proofs(self) -> Iterator[ProofRecord]:
        """Every stored proof, oldest first (anchor status, forensics, feeds)."""
        ...

    def iter_proof_candidates(
        self, index_key: str, after: str | None = None, limit: int | None = None
    ) -> Iterator[ProofRecord]:
        """Streamed in digest order: at least every proof with a PURL subject that a pattern
        whose ``index_key`` this is can match (stellakeys.proof_index), possibly more (callers
        decide each proof); every proof for ``""``. ``after``: only the proofs whose digest
        sorts after it; ``limit``: at most that many proofs. Keyset pagination: a long list is
        read in pages, each in a short read transaction, and a page must cost about its own
        size, not what came before it (an adapter that sorts every remaining candidate per
        page makes ``anchor status`` quadratic over a big anchor)."""
        ...

    # --- feed versions ----------------------------------------------------------------------
    def feed_versions(self) -> list[FeedVersionRecord]:
        """Every recorded feed version, ordered by version (1, 2, ... without gaps)."""
        ...

    def insert_feed_version(self, record: FeedVersionRecord) -> None:
        """Record the next feed version. ConflictError unless ``record.version`` is exactly
        one more than the highest recorded (1 when there is none) -- a version already taken,
        whatever its digest, is a conflict -- or if the digest already holds another version.
        NotFoundError if no proof has that digest."""
        ...

    # --- ceremonies -------------------------------------------------------------------------
    def get_ceremony(self, ceremony_id: str) -> Ceremony | None:
        """The ceremony with its approvals, ordered by approved_at then approval id."""
        ...

    def insert_ceremony(self, ceremony: Ceremony) -> None:
        """Insert a new ceremony; its approvals are added with :meth:`insert_approval`, so
        ``ceremony.approvals`` must be empty (ValueError otherwise). ConflictError if the id
        exists."""
        ...

    def update_ceremony(self, ceremony: Ceremony) -> None:
        """Store the state, executed_at, result, cancelled_at, cancel_reason and
        notifications_sent of the ceremony with the same id. Its terms (type, subject,
        payload, threshold, required approvers, times, initiator, allowed approvers) and its
        approvals are not touched. NotFoundError if there is none; ConflictError if the stored
        ceremony is already terminal (Executed, Expired, Cancelled): those never change."""
        ...

    def insert_approval(self, approval: Approval) -> None:
        """Add one approver's decision. NotFoundError if the ceremony does not exist;
        ConflictError if this approver has already decided on it or the approval id exists."""
        ...

    def list_ceremonies(self, states: Collection[CeremonyState] | None = None) -> list[Ceremony]:
        """Ceremonies (with approvals) ordered by created_at then id; only those whose stored
        state is in ``states`` when it is given."""
        ...

    # --- key lifecycle intents (crash consistency; stellakeys.intents) ------------------------
    def put_intent(self, intent: KeyIntent) -> None:
        """Insert or replace the intent for ``intent.key_id``."""
        ...

    def get_intent(self, key_id: str) -> KeyIntent | None: ...

    def list_intents(self) -> list[KeyIntent]:
        """Unfinished intents ordered by created_at then key_id."""
        ...

    def delete_intent(self, key_id: str) -> None:
        """Remove the intent (no error if there is none)."""
        ...

    # --- the store's dual-control policy (decision 0015) --------------------------------------
    def ceremony_policy_versions(self) -> list[PolicyVersion]:
        """Every recorded version of the policy, oldest (version 1) first."""
        ...

    def insert_ceremony_policy(self, version: PolicyVersion) -> None:
        """Append a version. ConflictError if that version number exists. Versions are never
        changed or deleted."""
        ...

    # --- audit ------------------------------------------------------------------------------
    def append_audit(self, record: AuditRecord) -> AuditEvent:
        """Chain the record after the current head (stellakeys.audit.chain_event) and store it.
        ConflictError if the event id exists."""
        ...

    def audit_events(self, query: AuditQuery | None = None) -> list[AuditEvent]:
        """Matching events in seq order (oldest first); ``limit`` keeps the oldest N matches.
        ``since`` and ``until`` are inclusive."""
        ...

    def iter_audit(self) -> Iterator[AuditEvent]:
        """Every event in seq order, streamed (verification of large logs)."""
        ...

    def iter_audit_rows(self) -> Iterator[AuditRow]:
        """Every event in seq order as a stellakeys.audit.AuditRow (the hashed fields as the
        canonical text they were hashed as), streamed: what ``audit verify`` reads."""
        ...

    def audit_state_rows(self) -> AuditStateRows:
        """Keys, anchors and key history as ``audit verify`` compares them with the log:
        equal to ``AuditStateRows.of(self.list_keys(), self.list_anchors())``, read without
        building those objects."""
        ...


class Store(Protocol):
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A serialised write transaction: commit on success, roll back on any exception."""
        ...

    def read(self) -> AbstractContextManager[Transaction]:
        """A read-only transaction with a consistent snapshot."""
        ...

    def change_token(self) -> object:
        """A value that differs after any committed write, by this or any other process.
        Caches (anchor lookup, key history) compare it to know when to drop their content.
        Read it before the data it guards; compare only tokens of the same store object."""
        ...

    def close(self) -> None: ...

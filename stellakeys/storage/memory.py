"""The in-memory storage adapter: tests, examples and short-lived tools.

Write transactions are serialised by one lock and work on a copy of the committed state that
is swapped in on commit, so an exception inside ``with store.transaction()`` leaves nothing
behind and readers always see a committed snapshot without taking the lock. Tables are copied
lazily (on the first write to each), and the audit log, which is append-only, is shared and
truncated back on rollback instead of copied.

Rows are kept in the same primitive form as in SQLite (:mod:`stellakeys.storage._codec`), which
gives both adapters the same semantics and means a caller can never change stored state by
mutating a metadata dict it passed in or got back.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import attrs

import stellakeys.storage._ceremony_codec as cc
import stellakeys.storage._codec as codec
import stellakeys.storage._intent_codec as ic
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import (
    AuditEvent,
    AuditQuery,
    AuditRecord,
    AuditRow,
    chain_event,
    text_audit_rows,
)
from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState
from stellakeys.ceremony.policy import PolicyVersion
from stellakeys.errors import ConflictError, NotFoundError, StorageError
from stellakeys.intents import KeyIntent
from stellakeys.keys import KeyRecord
from stellakeys.storage.ports import AuditStateRows, FeedVersionRecord, ProofRecord

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = ["MemoryStore", "MemoryTransaction"]

Row = tuple[Any, ...]


@attrs.define
class _State:
    """One committed version of the data. A committed ``_State`` is never mutated: a write
    transaction shallow-copies it and replaces each table it touches with a fresh dict."""

    keys: dict[str, Row] = attrs.Factory(dict)
    #: anchor id -> (anchor row, index key)
    anchors: dict[str, tuple[Row, str]] = attrs.Factory(dict)
    #: anchor id -> history rows ordered by (added_at, key_id)
    history: dict[str, tuple[Row, ...]] = attrs.Factory(dict)
    #: key id -> ids of the anchors it belongs to (history_of_key without a scan)
    by_key: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    #: index key -> anchor ids (anchors_by_index_keys without a scan)
    by_index: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    entry_ids: dict[str, None] = attrs.Factory(dict)
    #: digest -> (proof row, timestamp tokens in insertion order)
    proofs: dict[str, tuple[Row, tuple[bytes, ...]]] = attrs.Factory(dict)
    #: ceremony id -> ceremony row (stellakeys.storage._ceremony_codec)
    ceremonies: dict[str, Row] = attrs.Factory(dict)
    #: ceremony id -> approval rows ordered by (approved_at, approval id)
    approvals: dict[str, tuple[Row, ...]] = attrs.Factory(dict)
    approval_ids: dict[str, None] = attrs.Factory(dict)
    #: key id -> intent row (stellakeys.storage._intent_codec)
    intents: dict[str, Row] = attrs.Factory(dict)
    #: feed version -> FeedVersionRecord (immutable, so shared between states)
    feed_versions: dict[int, FeedVersionRecord] = attrs.Factory(dict)
    #: version -> PolicyVersion (decision 0015)
    policies: dict[int, PolicyVersion] = attrs.Factory(dict)
    #: how many events of the shared audit list are committed
    audit_len: int = 0


class MemoryTransaction:
    """A transaction on a :class:`MemoryStore`; use it only inside its ``with`` block."""

    def __init__(self, store: MemoryStore, state: _State, *, writable: bool) -> None:
        self._store = store
        self._writable = writable
        # A write transaction gets its own container whose tables still point at the
        # committed dicts until the first write to each (see _own).
        self._s = attrs.evolve(state) if writable else state
        self._copied: set[str] = set()
        self._audit_base = state.audit_len
        self.dirty = False
        self.open = True

    # --- plumbing -----------------------------------------------------------------------

    def _check(self) -> None:
        if not self.open:
            raise StorageError("the transaction is finished; open a new one")

    def _own(self, name: str) -> dict[Any, Any]:
        """The table ``name``, copied on first write so the committed state stays intact."""
        self._check()
        if not self._writable:
            raise StorageError("write inside a read-only transaction")
        table: dict[Any, Any] = getattr(self._s, name)
        if name not in self._copied:
            table = dict(table)
            setattr(self._s, name, table)
            self._copied.add(name)
        self.dirty = True
        return table

    def _require_writable(self) -> None:
        self._check()
        if not self._writable:
            raise StorageError("write inside a read-only transaction")

    def _history(self, anchor_id: str) -> tuple[KeyHistoryEntry, ...]:
        return tuple(codec.history_from_row(r) for r in self._s.history.get(anchor_id, ()))

    def _anchor(self, anchor_id: str) -> TrustAnchor | None:
        hit = self._s.anchors.get(anchor_id)
        if hit is None:
            return None
        return codec.anchor_from_row(hit[0], self._history(anchor_id))

    @staticmethod
    def _anchor_order(pair: tuple[Row, str]) -> tuple[int, str]:
        return (pair[0][4], pair[0][0])

    def commit_state(self) -> _State:
        self._s.audit_len = len(self._store._audit)
        return self._s

    def rollback(self) -> None:
        shared = self._store._audit
        for row in shared[self._audit_base :]:
            self._store._audit_ids.discard(row[1])
        del shared[self._audit_base :]

    # --- keys -----------------------------------------------------------------------------

    def get_key(self, key_id: str) -> KeyRecord | None:
        self._check()
        row = self._s.keys.get(key_id)
        return None if row is None else codec.key_from_row(row)

    def insert_key(self, record: KeyRecord) -> None:
        self._require_writable()
        row = codec.key_to_row(record)
        if record.key_id in self._s.keys:
            raise ConflictError(f"key {record.key_id!r} already exists")
        self._own("keys")[record.key_id] = row

    def list_keys(self) -> list[KeyRecord]:
        self._check()
        rows = sorted(self._s.keys.values(), key=lambda r: (r[4], r[0]))
        return [codec.key_from_row(r) for r in rows]

    # --- key lifecycle intents -----------------------------------------------------------

    def put_intent(self, intent: KeyIntent) -> None:
        self._own("intents")[intent.key_id] = ic.intent_to_row(intent)

    def get_intent(self, key_id: str) -> KeyIntent | None:
        self._check()
        row = self._s.intents.get(key_id)
        return None if row is None else ic.intent_from_row(row)

    def list_intents(self) -> list[KeyIntent]:
        self._check()
        rows = sorted(self._s.intents.values(), key=lambda r: (r[5], r[0]))
        return [ic.intent_from_row(r) for r in rows]

    def delete_intent(self, key_id: str) -> None:
        self._require_writable()
        if key_id in self._s.intents:
            del self._own("intents")[key_id]

    # --- trust anchors and key history ----------------------------------------------------

    def get_anchor(self, anchor_id: uuid.UUID) -> TrustAnchor | None:
        self._check()
        return self._anchor(str(anchor_id))

    def insert_anchor(self, anchor: TrustAnchor, index_key: str) -> None:
        self._require_writable()
        codec.check_history_belongs(anchor)
        aid = str(anchor.anchor_id)
        row = codec.anchor_to_row(anchor)
        rows = [codec.history_to_row(e) for e in anchor.key_history]
        if aid in self._s.anchors:
            raise ConflictError(f"trust anchor {aid} already exists")
        self._check_new_history(rows)
        self._own("anchors")[aid] = (row, index_key)
        by_index = self._own("by_index")
        by_index[index_key] = (*by_index.get(index_key, ()), aid)
        self._own("history")[aid] = ()
        for r in rows:
            self._add_history_row(r)

    def _check_new_history(self, rows: Sequence[Row]) -> None:
        seen: set[tuple[str, str]] = set()
        seen_ids: set[str] = set()
        for r in rows:
            pair = (r[1], r[2])
            if pair in seen or any(h[2] == r[2] for h in self._s.history.get(r[1], ())):
                raise ConflictError(f"key {r[2]!r} is already in trust anchor {r[1]}")
            if r[0] in seen_ids or r[0] in self._s.entry_ids:
                raise ConflictError(f"key history entry {r[0]} already exists")
            seen.add(pair)
            seen_ids.add(r[0])

    def _add_history_row(self, row: Row) -> None:
        aid, key_id = row[1], row[2]
        history = self._own("history")
        history[aid] = tuple(sorted((*history.get(aid, ()), row), key=codec.history_sort_key))
        by_key = self._own("by_key")
        by_key[key_id] = (*by_key.get(key_id, ()), aid)
        self._own("entry_ids")[row[0]] = None

    def set_anchor_active(self, anchor_id: uuid.UUID, active: bool) -> None:
        self._require_writable()
        aid = str(anchor_id)
        hit = self._s.anchors.get(aid)
        if hit is None:
            raise NotFoundError(f"no trust anchor {aid}")
        row, index_key = hit
        self._own("anchors")[aid] = ((*row[:5], 1 if active else 0), index_key)

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        self._check()
        pairs = sorted(self._s.anchors.values(), key=self._anchor_order)
        return [
            codec.anchor_from_row(row, self._history(row[0]))
            for row, _ in pairs
            if row[5] or not active_only
        ]

    def anchors_by_index_keys(self, index_keys: Sequence[str]) -> list[TrustAnchor]:
        self._check()
        pairs = []
        for index_key in dict.fromkeys(index_keys):
            for aid in self._s.by_index.get(index_key, ()):
                pair = self._s.anchors[aid]
                if pair[0][5]:
                    pairs.append(pair)
        pairs.sort(key=self._anchor_order)
        return [codec.anchor_from_row(row, self._history(row[0])) for row, _ in pairs]

    def active_index_keys(self, limit: int) -> frozenset[str] | None:
        self._check()
        keys = frozenset(
            k for k, ids in self._s.by_index.items() if any(self._s.anchors[a][0][5] for a in ids)
        )
        return None if len(keys) > limit else keys

    def anchors_below_index_key(self, index_key: str) -> list[TrustAnchor]:
        prefix = index_key + "/"
        return self.anchors_by_index_keys([k for k in self._s.by_index if k.startswith(prefix)])

    def insert_history(self, entry: KeyHistoryEntry) -> None:
        self._require_writable()
        row = codec.history_to_row(entry)
        if row[1] not in self._s.anchors:
            raise NotFoundError(f"no trust anchor {row[1]}")
        self._check_new_history([row])
        self._add_history_row(row)

    def update_history(self, entry: KeyHistoryEntry) -> None:
        self._require_writable()
        new = codec.history_to_row(entry)
        aid = new[1]
        rows = self._s.history.get(aid, ())
        for i, old in enumerate(rows):
            if old[2] == entry.key_id:
                # What the SQL triggers of migration 0003 enforce on the other adapters.
                codec.check_history_update(entry.key_id, old[7:10], new[7:10])
                # Only the revocation fields and metadata change; identity and added_at stay.
                replaced = (*old[:7], *new[7:])
                self._own("history")[aid] = (*rows[:i], replaced, *rows[i + 1 :])
                return
        raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {aid}")

    def history_of_key(self, key_id: str) -> list[KeyHistoryEntry]:
        self._check()
        rows = [
            r
            for aid in self._s.by_key.get(key_id, ())
            for r in self._s.history.get(aid, ())
            if r[2] == key_id
        ]
        rows.sort(key=lambda r: (r[6], r[1]))
        return [codec.history_from_row(r) for r in rows]

    def history_by_fingerprints(self, fingerprints: Collection[str]) -> list[KeyHistoryEntry]:
        self._check()
        wanted = set(fingerprints)
        if not wanted:
            return []
        # A scan: the memory store serves tests and feeds, and verification caches the answer.
        rows = [r for rows in self._s.history.values() for r in rows if r[5] in wanted]
        rows.sort(key=lambda r: (r[6], r[1], r[2]))
        return [codec.history_from_row(r) for r in rows]

    # --- proofs -----------------------------------------------------------------------------

    def put_proof(self, proof: ProofRecord) -> None:
        self._require_writable()
        row = codec.proof_to_row(proof)
        if proof.digest in self._s.proofs:
            return
        tokens = tuple(dict.fromkeys(bytes(t) for t in proof.timestamp_tokens))
        self._own("proofs")[proof.digest] = (row, tokens)

    def get_proof(self, digest: str) -> ProofRecord | None:
        self._check()
        hit = self._s.proofs.get(digest)
        return None if hit is None else codec.proof_from_row(*hit)

    def add_proof_timestamp(self, digest: str, token: bytes) -> None:
        self._require_writable()
        hit = self._s.proofs.get(digest)
        if hit is None:
            raise NotFoundError(f"no proof {digest}")
        token = bytes(token)
        if token not in hit[1]:
            self._own("proofs")[digest] = (hit[0], (*hit[1], token))

    def iter_proof_candidates(
        self, index_key: str, after: str | None = None, limit: int | None = None
    ) -> Iterator[ProofRecord]:
        # Every proof: a superset is allowed, and the memory store serves tests.
        self._check()
        codec.check_page_limit(limit)
        digests = sorted(d for d in self._s.proofs if after is None or d > after)
        page = digests if limit is None else digests[:limit]
        return (codec.proof_from_row(*self._s.proofs[d]) for d in page)

    def iter_proofs(self) -> Iterator[ProofRecord]:
        self._check()
        hits = sorted(self._s.proofs.values(), key=lambda h: (h[0][2], h[0][0]))
        return (codec.proof_from_row(*h) for h in hits)

    # --- feed versions ----------------------------------------------------------------------

    def feed_versions(self) -> list[FeedVersionRecord]:
        self._check()
        return [self._s.feed_versions[v] for v in sorted(self._s.feed_versions)]

    def insert_feed_version(self, record: FeedVersionRecord) -> None:
        self._require_writable()
        codec.to_micros(record.published_at)  # refuses a naive time, as the SQL adapters do
        versions = self._s.feed_versions
        if record.version != len(versions) + 1:
            raise ConflictError(codec.feed_version_conflict(record.version, len(versions)))
        if any(r.digest == record.digest for r in versions.values()):
            raise ConflictError(f"proof {record.digest} already holds a feed version")
        if record.digest not in self._s.proofs:
            raise NotFoundError(f"no proof {record.digest}")
        self._own("feed_versions")[record.version] = record

    # --- ceremonies -------------------------------------------------------------------------

    def _ceremony(self, ceremony_id: str) -> Ceremony | None:
        row = self._s.ceremonies.get(ceremony_id)
        if row is None:
            return None
        approvals = [cc.approval_from_row(r) for r in self._s.approvals.get(ceremony_id, ())]
        return cc.ceremony_from_row(row, approvals)

    def get_ceremony(self, ceremony_id: str) -> Ceremony | None:
        self._check()
        return self._ceremony(ceremony_id)

    def insert_ceremony(self, ceremony: Ceremony) -> None:
        self._require_writable()
        if ceremony.approvals:
            raise ValueError("insert a ceremony without approvals; add them with insert_approval")
        row = cc.ceremony_to_row(ceremony)
        if ceremony.ceremony_id in self._s.ceremonies:
            raise ConflictError(f"ceremony {ceremony.ceremony_id} already exists")
        self._own("ceremonies")[ceremony.ceremony_id] = row

    def update_ceremony(self, ceremony: Ceremony) -> None:
        self._require_writable()
        old = self._s.ceremonies.get(ceremony.ceremony_id)
        if old is None:
            raise NotFoundError(f"no ceremony {ceremony.ceremony_id}")
        if CeremonyState(old[3]).terminal:
            raise ConflictError(
                f"ceremony {ceremony.ceremony_id} is {old[3]}: a terminal ceremony never changes"
            )
        new = cc.ceremony_to_row(ceremony)
        # Only the mutable columns change (see the port); the terms stay as inserted.
        self._own("ceremonies")[ceremony.ceremony_id] = (*old[:3], new[3], *old[4:11], *new[11:])

    def insert_approval(self, approval: Approval) -> None:
        self._require_writable()
        row = cc.approval_to_row(approval)
        cid = approval.ceremony_id
        if cid not in self._s.ceremonies:
            raise NotFoundError(f"no ceremony {cid}")
        existing = self._s.approvals.get(cid, ())
        if any(r[2] == approval.approver for r in existing):
            raise ConflictError(f"{approval.approver} has already decided on ceremony {cid}")
        if approval.approval_id in self._s.approval_ids:
            raise ConflictError(f"approval {approval.approval_id} already exists")
        self._own("approvals")[cid] = tuple(sorted((*existing, row), key=cc.approval_sort_key))
        self._own("approval_ids")[approval.approval_id] = None

    def list_ceremonies(self, states: Collection[CeremonyState] | None = None) -> list[Ceremony]:
        self._check()
        wanted = None if states is None else {s.value for s in states}
        rows = sorted(
            (r for r in self._s.ceremonies.values() if wanted is None or r[3] in wanted),
            key=lambda r: (r[7], r[0]),
        )
        out = [self._ceremony(r[0]) for r in rows]
        return [c for c in out if c is not None]

    # --- dual-control policy ---------------------------------------------------------------

    def ceremony_policy_versions(self) -> list[PolicyVersion]:
        self._check()
        return [self._s.policies[v] for v in sorted(self._s.policies)]

    def insert_ceremony_policy(self, version: PolicyVersion) -> None:
        self._require_writable()
        if version.ceremony_id is not None and version.ceremony_id not in self._s.ceremonies:
            raise NotFoundError(f"no ceremony {version.ceremony_id}")
        if version.version in self._s.policies:
            raise ConflictError(f"ceremony policy version {version.version} already exists")
        self._own("policies")[version.version] = version

    # --- audit ------------------------------------------------------------------------------

    def _audit_end(self) -> int:
        # Inside a write transaction our own appends are visible; a read sees its snapshot.
        return len(self._store._audit) if self._writable else self._s.audit_len

    def append_audit(self, record: AuditRecord) -> AuditEvent:
        self._require_writable()
        shared = self._store._audit
        head = codec.audit_from_row(shared[-1]) if shared else None
        event = chain_event(head, record)
        row = codec.audit_to_row(event)
        if row[1] in self._store._audit_ids:
            raise ConflictError(f"audit event {row[1]} already exists")
        shared.append(row)
        self._store._audit_ids.add(row[1])
        self.dirty = True
        return event

    def audit_events(self, query: AuditQuery | None = None) -> list[AuditEvent]:
        self._check()
        if query is None:
            return list(self.iter_audit())
        codec.check_query(query)
        out: list[AuditEvent] = []
        if query.limit == 0:
            return out
        for event in self.iter_audit():
            if query.matches(event):
                out.append(event)
                if query.limit is not None and len(out) >= query.limit:
                    break
        return out

    def iter_audit(self) -> Iterator[AuditEvent]:
        self._check()
        shared, end = self._store._audit, self._audit_end()
        # Indexing (not slicing) streams without copying; rows below ``end`` are committed
        # (or ours) and are never removed while this transaction can see them.
        return (codec.audit_from_row(shared[i]) for i in range(end))

    def iter_audit_rows(self) -> Iterator[AuditRow]:
        self._check()
        shared, end = self._store._audit, self._audit_end()
        return text_audit_rows(shared[i] for i in range(end))

    def audit_state_rows(self) -> AuditStateRows:
        self._check()
        s = self._s
        keys = sorted(s.keys.values(), key=lambda r: (r[4], r[0]))
        anchors = sorted(s.anchors.values(), key=self._anchor_order)
        # Column positions of _codec's rows (KEY_COLUMNS, ANCHOR_COLUMNS, HISTORY_COLUMNS).
        return codec.audit_state_rows(
            [(r[0], r[1], r[3]) for r in keys],
            [(r[0], r[1], r[3], r[2], r[5]) for r, _ in anchors],
            [
                (h[1], h[2], h[6], h[7], h[8], h[9], h[5])
                for aid in sorted(s.history)
                for h in s.history[aid]
            ],
        )


class MemoryStore:
    """Thread-safe in-memory :class:`~stellakeys.storage.ports.Store`. ``MemoryStore()``."""

    def __init__(self) -> None:
        self._state = _State()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._version = 0
        self._closed = False
        # The audit log is append-only: shared between versions, truncated on rollback.
        self._audit: list[Row] = []
        self._audit_ids: set[str] = set()

    def __repr__(self) -> str:
        return f"MemoryStore(version={self._version})"

    def _enter(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")
        if getattr(self._local, "busy", False):
            # A nested write would deadlock on the lock; say so instead.
            raise StorageError("transactions do not nest: finish the open one first")
        self._local.busy = True

    @contextmanager
    def _transaction(self) -> Iterator[MemoryTransaction]:
        self._enter()
        try:
            with self._write_lock:
                tx = MemoryTransaction(self, self._state, writable=True)
                try:
                    yield tx
                except BaseException:
                    tx.rollback()
                    raise
                finally:
                    tx.open = False
                if tx.dirty:
                    # Readers pick up the new state with one atomic reference swap.
                    self._state = tx.commit_state()
                    self._version += 1
        finally:
            self._local.busy = False

    def transaction(self) -> AbstractContextManager[MemoryTransaction]:
        return self._transaction()

    @contextmanager
    def _read(self) -> Iterator[MemoryTransaction]:
        self._enter()
        tx = MemoryTransaction(self, self._state, writable=False)
        try:
            yield tx
        finally:
            tx.open = False
            self._local.busy = False

    def read(self) -> AbstractContextManager[MemoryTransaction]:
        return self._read()

    def change_token(self) -> object:
        return self._version

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:

    def _conforms(store: MemoryStore, tx: MemoryTransaction) -> tuple[Store, Transaction]:
        return store, tx

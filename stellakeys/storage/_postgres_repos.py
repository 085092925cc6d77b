"""The PostgreSQL repositories: keys, intents, anchors + key history, proofs (+ timestamps,
feed versions), ceremonies (+ policy) and audit, each a mixin over :class:`PgCore`, composed
into :class:`PostgresTransaction`. The store, pool and migrator are in
:mod:`stellakeys.storage.postgres`.

Writers hold the ``signer.store_state`` row lock since BEGIN, so "check, then write" here
cannot go stale; checks come first because a violated constraint would abort the whole
PostgreSQL transaction, while the port lets a caller catch ConflictError and carry on.
"""

# S608: every statement is assembled from module constants (column lists); values are always
# bound parameters, never formatted into SQL.
# ruff: noqa: S608

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors as pg_errors

import stellakeys.storage._ceremony_codec as cc
import stellakeys.storage._codec as codec
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent, AuditRecord, chain_event
from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState
from stellakeys.ceremony.policy import PolicyVersion
from stellakeys.errors import ConflictError, NotFoundError, StorageError
from stellakeys.keys import KeyRecord
from stellakeys.proof_index import proof_index_keys
from stellakeys.storage._postgres_sql import (
    _ANCHOR_BY_ID,
    _ANCHORS_BELOW_INDEX,
    _ANCHORS_BY_INDEX,
    _ANCHORS_JOIN,
    _ANCHORS_ORDER,
    _AUDIT_COLS,
    _AUDIT_SELECT,
    _CEREMONIES_JOIN,
    _CEREMONIES_ORDER,
    _HISTORY_COLS,
    _HISTORY_SELECT,
    _KEY_COLS,
    PgCore,
    Row,
    _group_anchors,
    _group_ceremonies,
    check_aware,
    opt_aware,
    proof_from_pg_row,
    storage_error,
)
from stellakeys.storage._sql import (
    AnchorCommon,
    AuditReads,
    CeremonyCommon,
    IntentRepository,
    ProofCommon,
)
from stellakeys.storage.ports import FeedVersionRecord, ProofRecord

if TYPE_CHECKING:
    from stellakeys.storage.ports import Transaction

__all__ = ["PostgresTransaction"]


class PgKeys(PgCore):
    """Key records."""

    __slots__ = ()

    def get_key(self, key_id: str) -> KeyRecord | None:
        self._check()
        row = self._one(f"SELECT {_KEY_COLS} FROM signer.keys WHERE key_id = %s", (key_id,))
        return None if row is None else KeyRecord(*row)

    def insert_key(self, record: KeyRecord) -> None:
        self._check_write()
        params = (
            record.key_id,
            record.algorithm,
            record.public_key_pem,
            record.fingerprint,
            check_aware(record.created_at),
            record.profile,
            record.key_store_uri,
            str(record.origin),
            codec.dump_json(dict(record.metadata)),
        )
        # ON CONFLICT DO NOTHING rather than catching the unique violation: an error would
        # abort the whole PostgreSQL transaction, while the port (like SQLite) lets the
        # caller catch ConflictError and carry on.
        row = self._one(
            f"INSERT INTO signer.keys ({_KEY_COLS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            params,
        )
        if row is None:
            raise ConflictError(f"key {record.key_id!r} already exists")

    def list_keys(self) -> list[KeyRecord]:
        self._check()
        rows = self._all(f"SELECT {_KEY_COLS} FROM signer.keys ORDER BY created_at, key_id")
        return [KeyRecord(*r) for r in rows]


class PgAnchors(PgCore, AnchorCommon):
    """Trust anchors and their key history."""

    __slots__ = ()

    def get_anchor(self, anchor_id: uuid.UUID) -> TrustAnchor | None:
        self._check()
        anchors = _group_anchors(self._all(_ANCHOR_BY_ID, (anchor_id,)))
        return anchors[0] if anchors else None

    def insert_anchor(self, anchor: TrustAnchor, index_key: str) -> None:
        self._check_write()
        codec.check_history_belongs(anchor)
        for entry in anchor.key_history:  # refuse naive times before writing anything
            self._history_params(entry)
        row = self._one(
            "INSERT INTO signer.trust_anchors (id, purl_pattern, allowed_predicate_types,"
            " policy_version, created_at, active, index_key)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (
                anchor.anchor_id,
                anchor.purl_pattern,
                list(anchor.allowed_predicate_types),
                anchor.policy_version,
                check_aware(anchor.created_at),
                anchor.active,
                index_key,
            ),
        )
        if row is None:
            raise ConflictError(f"trust anchor {anchor.anchor_id} already exists")
        for entry in anchor.key_history:
            self._insert_history(entry)

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        self._check()
        where = " WHERE a.active" if active_only else ""
        return _group_anchors(self._all(f"{_ANCHORS_JOIN}{where}{_ANCHORS_ORDER}"))

    def anchors_by_index_keys(self, index_keys: Sequence[str]) -> list[TrustAnchor]:
        self._check()
        if not index_keys:
            return []
        keys = list(dict.fromkeys(index_keys))
        return _group_anchors(self._all(_ANCHORS_BY_INDEX, (keys,)))

    def active_index_keys(self, limit: int) -> frozenset[str] | None:
        self._check()
        # The partial index idx_trust_anchors_index_key (index_key) WHERE active.
        rows = self._all(
            "SELECT DISTINCT index_key FROM signer.trust_anchors WHERE active LIMIT %s",
            (limit + 1,),
        )
        return None if len(rows) > limit else frozenset(r[0] for r in rows)

    def anchors_below_index_key(self, index_key: str) -> list[TrustAnchor]:
        self._check()
        return _group_anchors(self._all(_ANCHORS_BELOW_INDEX, (index_key + "/", index_key + "0")))

    def keys_valid_at(self, anchor_id: uuid.UUID, at: datetime) -> list[KeyHistoryEntry]:
        """The entries of one anchor valid at ``at`` (``added_at <= at < min(revoked_at,
        expires_at)``, as :meth:`KeyHistoryEntry.valid_at`), ordered by added_at then key_id.

        Not part of the port: a PostgreSQL extra for forensic tools and reports that ask the
        database directly. It is the runbook's temporal lookup, a range scan of
        idx_key_history_validity (anchor_id, added_at, revoked_at)."""
        self._check()
        rows = self._all(
            f"SELECT {_HISTORY_SELECT} FROM signer.key_history AS h"
            " WHERE h.anchor_id = %(a)s AND h.added_at <= %(t)s"
            " AND (h.revoked_at IS NULL OR h.revoked_at > %(t)s)"
            " AND (h.expires_at IS NULL OR h.expires_at > %(t)s)"
            " ORDER BY h.added_at, h.key_id",
            {"a": anchor_id, "t": check_aware(at)},
        )
        return [KeyHistoryEntry(*r) for r in rows]

    @staticmethod
    def _history_params(entry: KeyHistoryEntry) -> Row:
        codec.check_reason_known(entry.revoke_reason)
        return (
            entry.anchor_id,
            entry.key_id,
            entry.algorithm,
            entry.public_key_pem,
            entry.fingerprint,
            check_aware(entry.added_at),
            opt_aware(entry.revoked_at),
            entry.revoke_reason,
            opt_aware(entry.expires_at),
            codec.dump_json(dict(entry.metadata)),
            entry.entry_id,
        )

    def _insert_history(self, entry: KeyHistoryEntry) -> None:
        row = self._one(
            f"INSERT INTO signer.key_history ({_HISTORY_COLS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            self._history_params(entry),
        )
        if row is not None:
            return
        # Which unique constraint was it? (Rare path; the row lock keeps the answer stable.)
        if self._one("SELECT 1 FROM signer.key_history WHERE id = %s", (entry.entry_id,)):
            raise ConflictError(f"key history entry {entry.entry_id} already exists")
        raise ConflictError(f"key {entry.key_id!r} is already in trust anchor {entry.anchor_id}")

    def insert_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        params = self._history_params(entry)
        # Checked first because a foreign key violation would abort the transaction.
        # Anchors are never deleted and writers hold the store lock, so it cannot go stale.
        if self._one("SELECT 1 FROM signer.trust_anchors WHERE id = %s", (params[0],)) is None:
            raise NotFoundError(f"no trust anchor {entry.anchor_id}")
        self._insert_history(entry)

    def update_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        # The triggers of migration 0003 refuse the same; checked first for a ConflictError
        # (a trigger's exception would abort the whole transaction).
        old = self._one(
            "SELECT revoked_at, revoke_reason, expires_at FROM signer.key_history"
            " WHERE anchor_id = %s AND key_id = %s",
            (entry.anchor_id, entry.key_id),
        )
        if old is None:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")
        codec.check_history_update(
            entry.key_id,
            (old[0], old[1], old[2]),
            (opt_aware(entry.revoked_at), entry.revoke_reason, opt_aware(entry.expires_at)),
        )
        cursor = self._exec(
            "UPDATE signer.key_history SET revoked_at = %s, revoke_reason = %s,"
            " expires_at = %s, metadata = %s::jsonb WHERE anchor_id = %s AND key_id = %s",
            (
                opt_aware(entry.revoked_at),
                entry.revoke_reason,
                opt_aware(entry.expires_at),
                codec.dump_json(dict(entry.metadata)),
                entry.anchor_id,
                entry.key_id,
            ),
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")

    def history_of_key(self, key_id: str) -> list[KeyHistoryEntry]:
        self._check()
        rows = self._all(
            f"SELECT {_HISTORY_SELECT} FROM signer.key_history AS h"
            " WHERE h.key_id = %s ORDER BY h.added_at, h.anchor_id",
            (key_id,),
        )
        return [KeyHistoryEntry(*r) for r in rows]

    def history_by_fingerprints(self, fingerprints: Collection[str]) -> list[KeyHistoryEntry]:
        self._check()
        wanted = list(dict.fromkeys(fingerprints))
        if not wanted:
            return []
        rows = self._all(
            f"SELECT {_HISTORY_SELECT} FROM signer.key_history AS h"
            " WHERE h.fingerprint = ANY(%s) ORDER BY h.added_at, h.anchor_id, h.key_id",
            (wanted,),
        )
        return [KeyHistoryEntry(*r) for r in rows]


class PgProofs(PgCore, ProofCommon):
    """Proofs, their timestamp tokens and the feed versions that point at them."""

    __slots__ = ()

    def put_proof(self, proof: ProofRecord) -> None:
        self._check_write()
        codec.check_proof_digest(proof.digest, bytes(proof.envelope_json))
        row = self._one(
            "INSERT INTO signer.proofs (digest, envelope_json, created_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (digest) DO NOTHING RETURNING 1",
            (proof.digest, bytes(proof.envelope_json), check_aware(proof.created_at)),
        )
        if row is not None:  # a new proof: its tokens and index entries come with it
            for token in proof.timestamp_tokens:
                self._add_token(proof.digest, token)
            keys = sorted(proof_index_keys(bytes(proof.envelope_json)))
            if keys:
                self._exec(
                    "INSERT INTO signer.proof_subject_keys (index_key, digest)"
                    " SELECT k, %s FROM unnest(%s::text[]) AS k ON CONFLICT DO NOTHING",
                    (proof.digest, keys),
                )
            # Off the queue the insert trigger put it on (migration 0009).
            self._exec("DELETE FROM signer.proofs_unindexed WHERE digest = %s", (proof.digest,))

    def _add_token(self, digest: str, token: bytes) -> bool:
        """Insert unless present; False when the proof does not exist."""
        cursor = self._exec(
            "INSERT INTO signer.proof_timestamps (digest, token)"
            " SELECT p.digest, %s::bytea FROM signer.proofs AS p WHERE p.digest = %s"
            " ON CONFLICT (digest, token_sha256) DO NOTHING",
            (bytes(token), digest),
        )
        if cursor.rowcount == 1:
            return True
        return self._one("SELECT 1 FROM signer.proofs WHERE digest = %s", (digest,)) is not None

    def get_proof(self, digest: str) -> ProofRecord | None:
        self._check()
        rows = self._all(
            "SELECT p.digest, p.envelope_json, p.created_at, t.token FROM signer.proofs AS p"
            " LEFT JOIN signer.proof_timestamps AS t ON t.digest = p.digest"
            " WHERE p.digest = %s ORDER BY t.id",
            (digest,),
        )
        proofs = list(codec.group_proofs(rows, proof_from_pg_row))
        return proofs[0] if proofs else None

    def add_proof_timestamp(self, digest: str, token: bytes) -> None:
        self._check_write()
        if not self._add_token(digest, token):
            raise NotFoundError(f"no proof {digest}")

    # --- feed versions

    def feed_versions(self) -> list[FeedVersionRecord]:
        self._check()
        rows = self._all(
            "SELECT version, digest, published_at FROM signer.feed_versions ORDER BY version"
        )
        return [FeedVersionRecord(r[0], r[1], r[2]) for r in rows]

    def insert_feed_version(self, record: FeedVersionRecord) -> None:
        self._check_write()
        published = check_aware(record.published_at)
        # Checked first, under the store_state lock held since BEGIN (so the answers cannot go
        # stale), because a violated constraint would abort the transaction; the primary key,
        # the UNIQUE digest and the no-gap trigger enforce the same for any other writer.
        row = self._one("SELECT coalesce(max(version), 0) FROM signer.feed_versions")
        highest = int(row[0]) if row else 0
        if record.version != highest + 1:
            raise ConflictError(codec.feed_version_conflict(record.version, highest))
        if self._one("SELECT 1 FROM signer.feed_versions WHERE digest = %s", (record.digest,)):
            raise ConflictError(f"proof {record.digest} already holds a feed version")
        if not self._one("SELECT 1 FROM signer.proofs WHERE digest = %s", (record.digest,)):
            raise NotFoundError(f"no proof {record.digest}")
        try:
            self._conn.execute(
                "INSERT INTO signer.feed_versions (version, digest, published_at)"
                " VALUES (%s, %s, %s)",
                (record.version, record.digest, published),
            )
        except pg_errors.UniqueViolation:
            raise ConflictError(
                codec.feed_version_conflict(record.version, record.version)
            ) from None
        except psycopg.Error as exc:
            raise storage_error(exc, "statement") from exc


class PgCeremonies(PgCore, CeremonyCommon):
    """Ceremonies, their approvals and the dual-control policy versions."""

    __slots__ = ()

    def get_ceremony(self, ceremony_id: str) -> Ceremony | None:
        self._check()
        rows = self._all(f"{_CEREMONIES_JOIN} WHERE c.id = %s{_CEREMONIES_ORDER}", (ceremony_id,))
        found = _group_ceremonies(rows)
        return found[0] if found else None

    def insert_ceremony(self, ceremony: Ceremony) -> None:
        self._check_write()
        if ceremony.approvals:
            raise ValueError("insert a ceremony without approvals; add them with insert_approval")
        row = self._one(
            f"INSERT INTO signer.ceremonies ({cc.CEREMONY_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::json, %s, %s, %s, %s, %s, %s::json, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            cc.ceremony_to_row(ceremony, native=True),
        )
        if row is None:
            raise ConflictError(f"ceremony {ceremony.ceremony_id} already exists")

    def update_ceremony(self, ceremony: Ceremony) -> None:
        self._check_write()
        # Read under the store lock (held since BEGIN), so the state cannot move between this
        # check and the update: this is what makes "execute exactly once" hold across
        # processes. FOR UPDATE also keeps a writer that bypassed the lock out.
        current = self._one(
            "SELECT state FROM signer.ceremonies WHERE id = %s FOR UPDATE",
            (ceremony.ceremony_id,),
        )
        cc.check_mutable(ceremony.ceremony_id, current)
        self._exec(
            "UPDATE signer.ceremonies SET state = %s, executed_at = %s, result = %s::json,"
            " cancelled_at = %s, cancel_reason = %s, notifications_sent = %s WHERE id = %s",
            (*cc.mutable_part(cc.ceremony_to_row(ceremony, native=True)), ceremony.ceremony_id),
        )

    def insert_approval(self, approval: Approval) -> None:
        self._check_write()
        # Checked first: a foreign key violation would abort the transaction. Ceremonies are
        # never deleted and writers hold the store lock, so the answer cannot go stale.
        if self._one("SELECT 1 FROM signer.ceremonies WHERE id = %s", (approval.ceremony_id,)):
            row = self._one(
                f"INSERT INTO signer.ceremony_approvals ({cc.APPROVAL_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                cc.approval_to_row(approval, native=True),
            )
        else:
            raise NotFoundError(f"no ceremony {approval.ceremony_id}")
        if row is not None:
            return
        if self._one(
            "SELECT 1 FROM signer.ceremony_approvals WHERE ceremony_id = %s AND approver = %s",
            (approval.ceremony_id, approval.approver),
        ):
            raise ConflictError(
                f"{approval.approver} has already decided on ceremony {approval.ceremony_id}"
            )
        raise ConflictError(f"approval {approval.approval_id} already exists")

    def list_ceremonies(self, states: Collection[CeremonyState] | None = None) -> list[Ceremony]:
        self._check()
        if states is None:
            rows = self._all(_CEREMONIES_JOIN + _CEREMONIES_ORDER)
        else:
            values = sorted({s.value for s in states})
            if not values:
                return []
            rows = self._all(
                f"{_CEREMONIES_JOIN} WHERE c.state = ANY(%s){_CEREMONIES_ORDER}", (values,)
            )
        return _group_ceremonies(rows)

    # --- dual-control policy

    def insert_ceremony_policy(self, version: PolicyVersion) -> None:
        self._check_write()
        if version.ceremony_id is not None and not self._one(
            "SELECT 1 FROM signer.ceremonies WHERE id = %s", (version.ceremony_id,)
        ):
            raise NotFoundError(f"no ceremony {version.ceremony_id}")
        row = self._one(
            "INSERT INTO signer.ceremony_policy"
            " (version, policy, recorded_at, recorded_by, ceremony_id)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (
                version.version,
                version.policy_json.decode("utf-8"),
                check_aware(version.recorded_at),
                version.recorded_by,
                version.ceremony_id,
            ),
        )
        if row is None:
            raise ConflictError(f"ceremony policy version {version.version} already exists")


class PgAudit(PgCore, AuditReads):
    """The audit log: appends here, queries in the shared :class:`AuditReads`."""

    __slots__ = ()

    def append_audit(self, record: AuditRecord) -> AuditEvent:
        self._check_write()
        head = self._head
        if head is None:
            # The store_state row lock is held since BEGIN, so nobody can append between this
            # read and our insert: the chain stays one line.
            row = self._one(
                f"SELECT {_AUDIT_SELECT} FROM signer.key_audit_log ORDER BY seq DESC LIMIT 1"
            )
            head = None if row is None else AuditEvent(*row)
        event = chain_event(head, record)
        details = codec.dump_json(dict(event.details))
        returned = self._one(
            f"INSERT INTO signer.key_audit_log ({_AUDIT_COLS}, details, prev_hash, hash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING details",
            (
                event.seq,
                event.event_id,
                event.event_type,
                event.actor,
                check_aware(event.timestamp),
                event.key_id,
                event.anchor_id,
                event.ceremony_id,
                details,
                event.prev_hash,
                event.hash,
            ),
        )
        if returned is None:
            if self._one(
                "SELECT 1 FROM signer.key_audit_log WHERE event_id = %s", (event.event_id,)
            ):
                raise ConflictError(f"audit event {record.event_id} already exists")
            raise StorageError(
                f"audit event seq {event.seq} was taken by a writer that bypassed the store"
                " lock; retry"
            )
        # The hash covers the details as the caller gave them; jsonb normalises numbers
        # (1e16 comes back as 10000000000000000), which would break the chain on read.
        if codec.dump_json(returned[0]) != details:
            raise StorageError(
                "audit details do not survive a round trip through jsonb (a float such as"
                " 1e16?); store numbers as integers or strings"
            )
        self._head = event
        return event


class PostgresTransaction(PgKeys, IntentRepository, PgAnchors, PgProofs, PgCeremonies, PgAudit):
    """A transaction on a :class:`~stellakeys.storage.postgres.PostgresStore`: the
    repositories composed; use it only inside its ``with`` block."""

    __slots__ = ()


if TYPE_CHECKING:

    def _conforms(tx: PostgresTransaction) -> Transaction:
        return tx

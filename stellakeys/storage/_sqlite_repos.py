"""The SQLite repositories: keys, intents, anchors + key history, proofs (+ timestamps, feed
versions), ceremonies (+ policy) and audit, each a mixin over :class:`SqliteCore`, composed
into :class:`SqliteTransaction`. The store, its connections and its file safety are in
:mod:`stellakeys.storage.sqlite`; the plumbing shared with PostgreSQL in :mod:`._sql`.

Instants are INTEGER microseconds since the epoch; UUIDs TEXT; JSON TEXT with sorted keys.
"""

# S608: every statement here is assembled from module constants (column lists, "?" runs);
# values are always bound parameters, never formatted into SQL.
# ruff: noqa: S608

from __future__ import annotations

import functools
import sqlite3
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import stellakeys.storage._codec as codec
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.errors import ConflictError, NotFoundError, StorageError
from stellakeys.keys import KeyRecord
from stellakeys.proof_index import proof_index_keys
from stellakeys.storage._sql import (
    CHUNK,
    AnchorCommon,
    AuditReads,
    CeremonyCommon,
    Dialect,
    IntentRepository,
    ProofCommon,
    SqlCore,
    chunks,
    one_line,
)
from stellakeys.storage.ports import FeedVersionRecord, ProofRecord

if TYPE_CHECKING:
    # The ceremony and audit-append repositories import their models and codecs where they
    # use them: a verification never builds a ceremony (issue 20: CLI start-up).
    from stellakeys.audit import AuditEvent, AuditRecord
    from stellakeys.ceremony.model import Approval, Ceremony, CeremonyState
    from stellakeys.ceremony.policy import PolicyVersion
    from stellakeys.storage.ports import Transaction

__all__ = ["SQLITE", "SqliteTransaction", "select_proof", "storage_error"]

Row = tuple[Any, ...]


def storage_error(exc: sqlite3.Error, doing: str) -> StorageError:
    message = one_line(exc)
    if "locked" in message or "busy" in message:
        message += " (another writer held the database longer than the busy timeout)"
    return StorageError(f"SQLite {doing} failed: {message}")


#: A proof and its tokens in one statement: one statement is one snapshot in SQLite, so the
#: proof and its tokens agree without an explicit transaction around them.
_PROOF_WITH_TOKENS: Final = (
    "SELECT p.digest, p.envelope_json, p.created_at, t.token FROM proofs AS p"
    " LEFT JOIN proof_timestamps AS t ON t.digest = p.digest WHERE p.digest = ? ORDER BY t.id"
)


def select_proof(conn: sqlite3.Connection, digest: str) -> ProofRecord | None:
    """The proof at ``digest`` with its tokens, or None: one statement, run to completion
    (``fetchall``), so in autocommit mode it is its own read transaction and holds no
    snapshot afterwards. The stored bytes must hash to ``digest`` (ProofIntegrityError
    otherwise, :func:`codec.proof_from_row`): a row changed behind the store's back is caught
    here on every read."""
    try:
        rows = conn.execute(_PROOF_WITH_TOKENS, (digest,)).fetchall()
    except sqlite3.Error as exc:
        raise storage_error(exc, "query") from exc
    return next(codec.group_proofs(rows, codec.proof_from_row), None)


SQLITE: Final = Dialect(
    name="SQLite",
    param="?",
    schema="",
    native=False,
    json_cast="",
    glob_op="GLOB",
    glob=str,
    time=codec.to_micros,
    uuid=str,
    bool=int,
    time_out=codec.from_micros,
    proof_row=codec.proof_from_row,
    audit_select=codec.AUDIT_COLUMNS,
    audit_row=codec.audit_from_row,
    error_type=sqlite3.Error,
    storage_error=storage_error,
)


class SqliteCore(SqlCore):
    """The SQLite side of the plumbing: statements whose constraint failures become the
    port's errors, and streaming through ordinary cursors."""

    __slots__ = ()

    dialect = SQLITE

    def _exec(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        conflict: Callable[[str], str] | None = None,
        missing: str | None = None,
    ) -> sqlite3.Cursor:
        """Execute one statement, mapping constraint failures to the port's errors and every
        other SQLite error to a one-line StorageError."""
        try:
            cursor: sqlite3.Cursor = self._conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            if conflict is not None and text.startswith("UNIQUE constraint failed"):
                raise ConflictError(conflict(text)) from None
            if missing is not None and text.startswith("FOREIGN KEY constraint failed"):
                raise NotFoundError(missing) from None
            raise storage_error(exc, "write") from exc
        except sqlite3.Error as exc:
            raise storage_error(exc, "statement") from exc
        return cursor

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        cursor = self._exec(sql, params)
        self._cursors.append(cursor)
        return self._rows(cursor)


_SELECT_KEY = f"SELECT {codec.KEY_COLUMNS} FROM keys"
_SELECT_ANCHOR = f"SELECT {codec.ANCHOR_COLUMNS} FROM trust_anchors"
_SELECT_HISTORY = f"SELECT {codec.HISTORY_COLUMNS} FROM key_history"
_SELECT_AUDIT = f"SELECT {codec.AUDIT_COLUMNS} FROM key_audit_log"
_HISTORY_ORDER = " ORDER BY anchor_id, added_at, key_id"


@functools.cache
def _in_list(n: int) -> str:
    return ", ".join("?" * n)


@functools.cache
def _anchors_by_index_sql(n: int) -> str:
    # Served by idx_trust_anchors_index_key (index_key, active): one index probe per key.
    return (
        f"{_SELECT_ANCHOR} WHERE index_key IN ({_in_list(n)}) AND active = 1"
        " ORDER BY created_at, id"
    )


@functools.cache
def _history_of_anchors_sql(n: int) -> str:
    # Served by idx_key_history_validity (anchor_id, added_at, revoked_at).
    return f"{_SELECT_HISTORY} WHERE anchor_id IN ({_in_list(n)}){_HISTORY_ORDER}"


class SqliteKeys(SqliteCore):
    """Key records."""

    __slots__ = ()

    def get_key(self, key_id: str) -> KeyRecord | None:
        self._check()
        row = self._one(_SELECT_KEY + " WHERE key_id = ?", (key_id,))
        return None if row is None else codec.key_from_row(row)

    def insert_key(self, record: KeyRecord) -> None:
        self._check_write()
        self._exec(
            f"INSERT INTO keys ({codec.KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.key_to_row(record),
            conflict=lambda _: f"key {record.key_id!r} already exists",
        )

    def list_keys(self) -> list[KeyRecord]:
        self._check()
        return [
            codec.key_from_row(r) for r in self._all(_SELECT_KEY + " ORDER BY created_at, key_id")
        ]


class SqliteAnchors(SqliteCore, AnchorCommon):
    """Trust anchors and their key history."""

    __slots__ = ()

    def _with_history(self, anchor_rows: list[Row]) -> list[TrustAnchor]:
        """Attach history to anchors with one query per chunk of anchors (not one per anchor)."""
        if not anchor_rows:
            return []
        uuids = {r[0]: uuid.UUID(r[0]) for r in anchor_rows}
        history: dict[str, list[KeyHistoryEntry]] = {aid: [] for aid in uuids}
        ids = list(history)
        for chunk in chunks(ids):
            for h in self._all(_history_of_anchors_sql(len(chunk)), chunk):
                history[h[1]].append(codec.history_from_row(h, uuids[h[1]]))
        return [codec.anchor_from_row(r, tuple(history[r[0]]), uuids[r[0]]) for r in anchor_rows]

    def get_anchor(self, anchor_id: uuid.UUID) -> TrustAnchor | None:
        self._check()
        row = self._one(_SELECT_ANCHOR + " WHERE id = ?", (str(anchor_id),))
        return None if row is None else self._with_history([row])[0]

    def insert_anchor(self, anchor: TrustAnchor, index_key: str) -> None:
        self._check_write()
        codec.check_history_belongs(anchor)
        self._exec(
            f"INSERT INTO trust_anchors ({codec.ANCHOR_COLUMNS}, index_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*codec.anchor_to_row(anchor), index_key),
            conflict=lambda _: f"trust anchor {anchor.anchor_id} already exists",
        )
        for entry in anchor.key_history:
            self._insert_history(entry)

    def list_anchors(self, *, active_only: bool = False) -> list[TrustAnchor]:
        self._check()
        where = " WHERE active = 1" if active_only else ""
        anchors = self._all(f"{_SELECT_ANCHOR}{where} ORDER BY created_at, id")
        # All history in one ordered pass rather than per anchor or per IN-chunk.
        hwhere = (
            " WHERE anchor_id IN (SELECT id FROM trust_anchors WHERE active = 1)"
            if active_only
            else ""
        )
        history: dict[str, list[KeyHistoryEntry]] = {r[0]: [] for r in anchors}
        for h in self._stream(f"{_SELECT_HISTORY}{hwhere}{_HISTORY_ORDER}"):
            bucket = history.get(h[1])
            if bucket is not None:
                bucket.append(codec.history_from_row(h))
        return [codec.anchor_from_row(r, tuple(history[r[0]])) for r in anchors]

    def anchors_by_index_keys(self, index_keys: Sequence[str]) -> list[TrustAnchor]:
        self._check()
        keys = list(dict.fromkeys(index_keys))
        rows: list[Row] = []
        for chunk in chunks(keys):
            rows += self._all(_anchors_by_index_sql(len(chunk)), chunk)
        if len(keys) > CHUNK:
            rows.sort(key=lambda r: (r[4], r[0]))
        return self._with_history(rows)

    def active_index_keys(self, limit: int) -> frozenset[str] | None:
        self._check()
        # A covering scan of idx_trust_anchors_index_key (index_key, active).
        rows = self._all(
            "SELECT DISTINCT index_key FROM trust_anchors WHERE active = 1 LIMIT ?", (limit + 1,)
        )
        return None if len(rows) > limit else frozenset(r[0] for r in rows)

    def anchors_below_index_key(self, index_key: str) -> list[TrustAnchor]:
        self._check()
        # A range on idx_trust_anchors_index_key: '0' is the character after '/' in BINARY
        # collation, so [key + '/', key + '0') is exactly the keys continuing with '/'.
        rows = self._all(
            f"{_SELECT_ANCHOR} WHERE index_key >= ? AND index_key < ? AND active = 1"
            " ORDER BY created_at, id",
            (index_key + "/", index_key + "0"),
        )
        return self._with_history(rows)

    def _insert_history(self, entry: KeyHistoryEntry) -> None:
        def conflict(text: str) -> str:
            if "key_history.id" in text:
                return f"key history entry {entry.entry_id} already exists"
            return f"key {entry.key_id!r} is already in trust anchor {entry.anchor_id}"

        self._exec(
            f"INSERT INTO key_history ({codec.HISTORY_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.history_to_row(entry),
            conflict=conflict,
            missing=f"no trust anchor {entry.anchor_id}",
        )

    def insert_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        self._insert_history(entry)

    def update_history(self, entry: KeyHistoryEntry) -> None:
        self._check_write()
        row = codec.history_to_row(entry)
        # The triggers of migration 0003 refuse the same; checked first for a ConflictError.
        old = self._one(
            "SELECT revoked_at, revoke_reason, expires_at FROM key_history"
            " WHERE anchor_id = ? AND key_id = ?",
            (row[1], row[2]),
        )
        if old is None:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")
        codec.check_history_update(entry.key_id, (old[0], old[1], old[2]), (row[7], row[8], row[9]))
        cursor = self._exec(
            "UPDATE key_history SET revoked_at = ?, revoke_reason = ?, expires_at = ?,"
            " metadata = ? WHERE anchor_id = ? AND key_id = ?",
            (*row[7:11], row[1], row[2]),
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"key {entry.key_id!r} is not in trust anchor {entry.anchor_id}")

    def history_of_key(self, key_id: str) -> list[KeyHistoryEntry]:
        self._check()
        rows = self._all(
            _SELECT_HISTORY + " WHERE key_id = ? ORDER BY added_at, anchor_id", (key_id,)
        )
        return [codec.history_from_row(r) for r in rows]

    def history_by_fingerprints(self, fingerprints: Collection[str]) -> list[KeyHistoryEntry]:
        self._check()
        rows: list[Row] = []
        for chunk in chunks(list(dict.fromkeys(fingerprints))):
            marks = ", ".join("?" * len(chunk))
            rows += self._all(_SELECT_HISTORY + f" WHERE fingerprint IN ({marks})", chunk)
        rows.sort(key=lambda r: (r[6], r[1], r[2]))
        return [codec.history_from_row(r) for r in rows]


class SqliteProofs(SqliteCore, ProofCommon):
    """Proofs, their timestamp tokens and the feed versions that point at them."""

    __slots__ = ()

    def put_proof(self, proof: ProofRecord) -> None:
        self._check_write()
        cursor = self._exec(
            f"INSERT INTO proofs ({codec.PROOF_COLUMNS}) VALUES (?, ?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            codec.proof_to_row(proof),
        )
        if cursor.rowcount == 1:  # a new proof: its tokens and index entries come with it
            for token in proof.timestamp_tokens:
                self._add_token(proof.digest, token)
            self._index_proof(proof)

    def _index_proof(self, proof: ProofRecord) -> None:
        """File a new proof under its subjects' lookup keys and take it off the queue the
        insert trigger put it on (migration 0009)."""
        keys = sorted(proof_index_keys(bytes(proof.envelope_json)))
        if keys:
            self._conn.executemany(
                "INSERT INTO proof_subject_keys (index_key, digest) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(k, proof.digest) for k in keys],
            )
        self._exec("DELETE FROM proofs_unindexed WHERE digest = ?", (proof.digest,))

    def _add_token(self, digest: str, token: bytes) -> None:
        self._exec(
            "INSERT INTO proof_timestamps (digest, token) VALUES (?, ?)"
            " ON CONFLICT (digest, token) DO NOTHING",
            (digest, bytes(token)),
            missing=f"no proof {digest}",
        )

    def get_proof(self, digest: str) -> ProofRecord | None:
        self._check()
        return select_proof(self._conn, digest)

    def add_proof_timestamp(self, digest: str, token: bytes) -> None:
        self._check_write()
        self._add_token(digest, token)

    # --- feed versions

    def feed_versions(self) -> list[FeedVersionRecord]:
        self._check()
        rows = self._all("SELECT version, digest, published_at FROM feed_versions ORDER BY version")
        return [FeedVersionRecord(r[0], r[1], codec.from_micros(r[2])) for r in rows]

    def insert_feed_version(self, record: FeedVersionRecord) -> None:
        self._check_write()
        published = codec.to_micros(record.published_at)
        # Checked first for a precise message (the write lock is held since BEGIN IMMEDIATE,
        # so the answer cannot go stale); the primary key, the UNIQUE digest and the no-gap
        # trigger enforce the same rules for any other writer.
        (highest,) = self._one("SELECT coalesce(max(version), 0) FROM feed_versions") or (0,)
        if record.version != highest + 1:
            raise ConflictError(codec.feed_version_conflict(record.version, highest))
        self._exec(
            "INSERT INTO feed_versions (version, digest, published_at) VALUES (?, ?, ?)",
            (record.version, record.digest, published),
            conflict=lambda text: (
                f"proof {record.digest} already holds a feed version"
                if "digest" in text
                else codec.feed_version_conflict(record.version, record.version)
            ),
            missing=f"no proof {record.digest}",
        )


def _select_ceremony() -> str:
    import stellakeys.storage._ceremony_codec as cc

    return f"SELECT {cc.CEREMONY_COLUMNS} FROM ceremonies"


class SqliteCeremonies(SqliteCore, CeremonyCommon):
    """Ceremonies, their approvals and the dual-control policy versions."""

    __slots__ = ()

    def _with_approvals(self, rows: list[Row]) -> list[Ceremony]:
        """Attach approvals with one query per chunk of ceremonies (not one per ceremony)."""
        if not rows:
            return []
        import stellakeys.storage._ceremony_codec as cc

        select = f"SELECT {cc.APPROVAL_COLUMNS} FROM ceremony_approvals"
        approvals: dict[str, list[Approval]] = {r[0]: [] for r in rows}
        ids = list(approvals)
        for chunk in chunks(ids):
            sql = f"{select} WHERE ceremony_id IN ({_in_list(len(chunk))}) ORDER BY approved_at, id"
            for a in self._all(sql, chunk):
                approvals[a[1]].append(cc.approval_from_row(a))
        return [cc.ceremony_from_row(r, approvals[r[0]]) for r in rows]

    def get_ceremony(self, ceremony_id: str) -> Ceremony | None:
        self._check()
        row = self._one(_select_ceremony() + " WHERE id = ?", (ceremony_id,))
        return None if row is None else self._with_approvals([row])[0]

    def insert_ceremony(self, ceremony: Ceremony) -> None:
        import stellakeys.storage._ceremony_codec as cc

        self._check_write()
        if ceremony.approvals:
            raise ValueError("insert a ceremony without approvals; add them with insert_approval")
        self._exec(
            f"INSERT INTO ceremonies ({cc.CEREMONY_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            cc.ceremony_to_row(ceremony),
            conflict=lambda _: f"ceremony {ceremony.ceremony_id} already exists",
        )

    def update_ceremony(self, ceremony: Ceremony) -> None:
        import stellakeys.storage._ceremony_codec as cc

        self._check_write()
        current = self._one("SELECT state FROM ceremonies WHERE id = ?", (ceremony.ceremony_id,))
        cc.check_mutable(ceremony.ceremony_id, current)
        self._exec(
            "UPDATE ceremonies SET state = ?, executed_at = ?, result = ?, cancelled_at = ?,"
            " cancel_reason = ?, notifications_sent = ? WHERE id = ?",
            (*cc.mutable_part(cc.ceremony_to_row(ceremony)), ceremony.ceremony_id),
        )

    def insert_approval(self, approval: Approval) -> None:
        import stellakeys.storage._ceremony_codec as cc

        self._check_write()

        def conflict(text: str) -> str:
            if "ceremony_approvals.approver" in text:
                return f"{approval.approver} has already decided on ceremony {approval.ceremony_id}"
            return f"approval {approval.approval_id} already exists"

        self._exec(
            f"INSERT INTO ceremony_approvals ({cc.APPROVAL_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            cc.approval_to_row(approval),
            conflict=conflict,
            missing=f"no ceremony {approval.ceremony_id}",
        )

    def list_ceremonies(self, states: Collection[CeremonyState] | None = None) -> list[Ceremony]:
        self._check()
        if states is None:
            rows = self._all(_select_ceremony() + " ORDER BY created_at, id")
        else:
            values = sorted({s.value for s in states})
            if not values:
                return []
            rows = self._all(
                f"{_select_ceremony()} WHERE state IN ({_in_list(len(values))})"
                " ORDER BY created_at, id",
                values,
            )
        return self._with_approvals(rows)

    # --- dual-control policy

    def insert_ceremony_policy(self, version: PolicyVersion) -> None:
        self._check_write()
        self._exec(
            "INSERT INTO ceremony_policy (version, policy, recorded_at, recorded_by, ceremony_id)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                version.version,
                version.policy_json.decode("utf-8"),
                codec.to_micros(version.recorded_at),
                version.recorded_by,
                version.ceremony_id,
            ),
            conflict=lambda _: f"ceremony policy version {version.version} already exists",
            missing=f"no ceremony {version.ceremony_id}",
        )


class SqliteAudit(SqliteCore, AuditReads):
    """The audit log: appends here, queries in the shared :class:`AuditReads`."""

    __slots__ = ()

    def append_audit(self, record: AuditRecord) -> AuditEvent:
        from stellakeys.audit import chain_event

        self._check_write()
        # The write lock is held since BEGIN IMMEDIATE, so nobody can append between reading
        # the head and inserting its successor.
        row = self._one(_SELECT_AUDIT + " ORDER BY seq DESC LIMIT 1")
        event = chain_event(None if row is None else codec.audit_from_row(row), record)
        self._exec(
            f"INSERT INTO key_audit_log ({codec.AUDIT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.audit_to_row(event),
            conflict=lambda _: f"audit event {record.event_id} already exists",
        )
        return event


class SqliteTransaction(
    SqliteKeys, IntentRepository, SqliteAnchors, SqliteProofs, SqliteCeremonies, SqliteAudit
):
    """A transaction on a :class:`~stellakeys.storage.sqlite.SqliteStore`: the repositories
    composed; use it only inside its ``with`` block."""

    __slots__ = ()

    def __init__(self, conn: sqlite3.Connection, *, writable: bool) -> None:
        self._start(conn, writable)


if TYPE_CHECKING:

    def _conforms(tx: SqliteTransaction) -> Transaction:
        return tx

"""Verification by ``sha256:`` address on SQLite, each proof a new PURL (issue 20's cold path).

The shortcuts of that path, each held by a test that fails when the shortcut is wrong:

* the proof and its tokens are read by one SELECT without BEGIN/COMMIT
  (``SqliteStore.read_proof``): it must still check the stored bytes against the address,
  return every token in order, and leave no snapshot open behind it;
* a new PURL under a known anchor opens no read transaction (``StoreSource``: the active
  index keys say no other anchor is there): a commit by another writer must still be seen.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.crypto import PrivateKey, get_algorithm
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.errors import ProofIntegrityError, StorageError
from stellakeys.purl import PurlPattern
from stellakeys.storage.ports import ProofRecord
from stellakeys.storage.sqlite import SqliteStore
from stellakeys.store_verifier import StoreVerifier

PREDICATE = "evidence.stella/v1"
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
AT = datetime(2024, 6, 1, tzinfo=UTC)
NOW = datetime(2024, 7, 1, tzinfo=UTC)
ANCHOR = uuid.UUID(int=1)


def statement(purl: str) -> bytes:
    return (
        b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"%s","digest":'
        b'{"sha256":"%s"}}],"predicateType":"%s","predicate":{}}'
        % (purl.encode(), b"ab" * 32, PREDICATE.encode())
    )


def entry(anchor_id: uuid.UUID, key_id: str, key: PrivateKey) -> KeyHistoryEntry:
    return KeyHistoryEntry(
        anchor_id=anchor_id,
        key_id=key_id,
        algorithm="ed25519",
        public_key_pem=key.public_key().to_pem(),
        fingerprint=key.fingerprint,
        added_at=T0,
    )


def add_anchor(store: SqliteStore, anchor_id: uuid.UUID, pattern: str, e: KeyHistoryEntry) -> None:
    p = PurlPattern.parse(pattern)
    with store.transaction() as tx:
        tx.insert_anchor(TrustAnchor(anchor_id, p.text, (PREDICATE,), "v1", T0, (e,)), p.index_key)


@attrs.define
class Home:
    path: Path
    key: PrivateKey

    def store(self) -> SqliteStore:
        return SqliteStore.open_home(self.path)

    def put(self, purl: str, tokens: tuple[bytes, ...] = ()) -> tuple[str, Envelope]:
        envelope = sign_envelope(INTOTO_PAYLOAD_TYPE, statement(purl), [self.key], keyids=["k"])
        store = self.store()
        with store.transaction() as tx:
            tx.put_proof(ProofRecord(envelope.digest(), envelope.to_json(), T0, tokens))
        store.close()
        return envelope.digest(), envelope


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    key = get_algorithm("ed25519").generate()
    h = Home(tmp_path / "home", key)
    store = h.store()
    add_anchor(store, ANCHOR, "pkg:npm/*", entry(ANCHOR, "k", key))
    store.close()
    yield h


@pytest.fixture
def verifier(home: Home) -> Iterator[StoreVerifier]:
    sv = StoreVerifier(home.store())
    yield sv
    sv.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path / "stellakeys.db", isolation_level=None, timeout=30)


# --- the single-statement read ---------------------------------------------------------------


def test_read_proof_returns_what_a_read_transaction_returns(home: Home) -> None:
    with_tokens, _ = home.put("pkg:npm/a@1", (b"token-2", b"token-1", b"token-3"))
    without, _ = home.put("pkg:npm/b@1")
    store = home.store()
    for digest in (with_tokens, without, "sha256:" + "00" * 32):
        with store.read() as tx:
            expected = tx.get_proof(digest)
        assert store.read_proof(digest) == expected
    proof = store.read_proof(with_tokens)
    assert proof is not None and proof.timestamp_tokens == (b"token-2", b"token-1", b"token-3")
    proof = store.read_proof(without)
    assert proof is not None and proof.timestamp_tokens == ()
    store.close()


def test_the_verifier_reads_proofs_without_a_transaction(
    home: Home, verifier: StoreVerifier
) -> None:
    digest, _ = home.put("pkg:npm/a@1")
    assert verifier.verify(digest, now=NOW, at=AT).ok
    statements: list[str] = []
    conn = verifier.store._connection()  # type: ignore[attr-defined]
    conn.set_trace_callback(statements.append)
    try:
        assert verifier.verify(digest, now=NOW, at=AT).ok
    finally:
        conn.set_trace_callback(None)
    assert [s.split()[0] for s in statements] == ["SELECT"], statements


def test_a_row_replaced_behind_the_store_is_caught_on_the_cold_path(
    home: Home, verifier: StoreVerifier
) -> None:
    digest, _ = home.put("pkg:npm/a@1")
    other, other_envelope = home.put("pkg:npm/evil@6")
    assert verifier.verify(digest, now=NOW, at=AT).ok  # warm: nothing cached may hide it
    with raw(home.path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS proofs_no_update")
        conn.execute(
            "UPDATE proofs SET envelope_json = ? WHERE digest = ?",
            (other_envelope.to_json(), digest),
        )
    with pytest.raises(ProofIntegrityError) as raised:
        verifier.verify(digest, now=NOW, at=AT)
    assert digest in str(raised.value) and other in str(raised.value)
    with pytest.raises(ProofIntegrityError):
        verifier.proof_timestamps(digest)


def test_read_proof_leaves_no_snapshot_open(home: Home, verifier: StoreVerifier) -> None:
    """A statement left unfinished would keep its read transaction, and with it a WAL
    snapshot: a checkpoint could not truncate the WAL while the verifier sits idle."""
    digest, _ = home.put("pkg:npm/a@1", (b"t1", b"t2"))
    assert verifier.proof_record(digest).timestamp_tokens == (b"t1", b"t2")
    home.put("pkg:npm/c@1")  # something in the WAL past the verifier's read
    with raw(home.path) as conn:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def test_read_proof_sees_the_latest_commit(home: Home, verifier: StoreVerifier) -> None:
    digest, _ = home.put("pkg:npm/a@1")
    assert verifier.proof_timestamps(digest) == ()
    store = home.store()
    with store.transaction() as tx:
        tx.add_proof_timestamp(digest, b"late-token")
    store.close()
    assert verifier.proof_timestamps(digest) == (b"late-token",)


def test_read_proof_refuses_to_nest_in_an_open_transaction(home: Home) -> None:
    digest, _ = home.put("pkg:npm/a@1")
    store = home.store()
    with store.read(), pytest.raises(StorageError, match="do not nest"):
        store.read_proof(digest)
    store.close()


# --- a new PURL under a known anchor -----------------------------------------------------------


def test_a_new_purl_under_a_known_anchor_opens_no_transaction(
    home: Home, verifier: StoreVerifier
) -> None:
    first, _ = home.put("pkg:npm/a@1")
    second, _ = home.put("pkg:npm/b@1")
    assert verifier.verify(first, now=NOW, at=AT).ok
    begins: list[str] = []
    conn = verifier.store._connection()  # type: ignore[attr-defined]
    conn.set_trace_callback(lambda s: begins.append(s) if s.startswith("BEGIN") else None)
    try:
        result = verifier.verify(second, now=NOW, at=AT)
    finally:
        conn.set_trace_callback(None)
    assert result.ok and begins == []


def test_an_anchor_added_by_another_writer_is_seen_by_the_next_new_purl(
    home: Home, verifier: StoreVerifier
) -> None:
    """The in-memory index keys say which keys have anchors; another writer's commit moves
    the change token, and the next new PURL must find the new, more specific anchor."""
    warm, _ = home.put("pkg:npm/a@1")
    special, _ = home.put("pkg:npm/special@1")
    assert verifier.verify(warm, now=NOW, at=AT).ok
    other_key = get_algorithm("ed25519").generate()
    store = home.store()  # another writer (another process would do the same)
    add_anchor(store, uuid.UUID(int=2), "pkg:npm/special", entry(uuid.UUID(int=2), "o", other_key))
    store.close()
    result = verifier.verify(special, now=NOW, at=AT)
    assert result.anchor_id == uuid.UUID(int=2)
    assert not result.ok  # signed by a key the special anchor does not hold


def test_a_revocation_by_another_writer_is_seen_by_the_next_new_purl(
    home: Home, verifier: StoreVerifier
) -> None:
    warm, _ = home.put("pkg:npm/a@1")
    cold, _ = home.put("pkg:npm/b@1")
    assert verifier.verify(warm, now=NOW, at=AT).ok
    revoke_behind(home)
    assert not verifier.verify(cold, now=NOW, at=AT).ok


def revoke_behind(home: Home) -> None:
    """Another writer revokes the anchor's key as compromised before AT, and commits."""
    store = home.store()
    with store.transaction() as tx:
        tx.update_history(
            attrs.evolve(
                entry(ANCHOR, "k", home.key),
                revoked_at=AT - timedelta(days=1),
                revoke_reason="compromise",
            )
        )
    store.close()


# --- one token for a block of verifications (anchor status) ----------------------------------


def test_one_token_reads_the_change_token_once_per_block(
    home: Home, verifier: StoreVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    proofs = [home.put(f"pkg:npm/p{i}@1") for i in range(4)]
    reads: list[object] = []
    real = verifier.store.change_token

    def counting() -> object:
        reads.append(real())
        return reads[-1]

    monkeypatch.setattr(verifier.store, "change_token", counting)
    with verifier.one_token():
        assert all(verifier.verify(d, now=NOW, at=AT).ok for d, _ in proofs)
    assert len(reads) == 1
    assert all(verifier.verify(e, now=NOW, at=AT).ok for _, e in proofs)
    assert len(reads) == 1 + len(proofs)  # outside a block: one read per verification


def test_one_token_block_ends_with_the_block(home: Home, verifier: StoreVerifier) -> None:
    """A revocation committed by another writer during a block counts from the next
    verification after it; one committed before the block is seen inside it."""
    digest, _ = home.put("pkg:npm/a@1")
    with verifier.one_token():
        assert verifier.verify(digest, now=NOW, at=AT).ok
        revoke_behind(home)
        assert verifier.verify(digest, now=NOW, at=AT).ok  # as of the block's read
    assert not verifier.verify(digest, now=NOW, at=AT).ok
    with verifier.one_token():
        assert not verifier.verify(digest, now=NOW, at=AT).ok
    with pytest.raises(RuntimeError), verifier.one_token():
        raise RuntimeError("boom")
    assert not verifier.source.pinned_here()

"""``anchor status`` through the subject index (issue 20, migration 0009): the same answer as
reading every proof of the home, while reading only the anchor's proofs.

Hostile and awkward inputs: proofs naming several PURLs (the first matching one counts),
malformed PURLs and statements, non-in-toto payloads, a proof written behind put_proof's
back (raw INSERT, as an older version or an import tool would), and a home upgraded from
before the index.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.clock import FrozenClock
from stellakeys.crypto._base import fingerprint_of_spki
from stellakeys.dsse import Envelope, Signature, pae
from stellakeys.keys import KeyOrigin, KeyRecord
from stellakeys.manager import KeyManager
from stellakeys.manager_values import safe_match, subject_purls
from stellakeys.proof_index import proof_index_keys
from stellakeys.purl_pattern import PurlPattern
from stellakeys.storage import _codec as codec
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.ports import ProofRecord, Store
from stellakeys.storage.sqlite import SqliteStore

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
INTOTO = "application/vnd.in-toto+json"
PATTERNS = ["pkg:npm/scope0/*", "pkg:npm/scope1/*", "pkg:npm/sc*", "pkg:npm/scope0/lit@1.0", "*"]
KEY = ed25519.Ed25519PrivateKey.generate()


def statement(*names: object) -> bytes:
    subjects = [{"name": n, "digest": {"sha256": "ab" * 32}} for n in names]
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": subjects,
            "predicateType": "evidence.stella/v1",
            "predicate": {},
        }
    ).encode()


def envelope(payload: bytes, payload_type: str = INTOTO) -> bytes:
    sig = KEY.sign(pae(payload_type, payload))
    return Envelope(payload_type, payload, (Signature(sig, "k"),)).to_json()


def payloads() -> Iterator[bytes]:
    for i in range(12):
        yield envelope(statement(f"pkg:npm/scope{i % 3}/p{i}@1.0.{i}"))
    yield envelope(statement("not-a-purl", "pkg:npm/scope1/second@2"))  # second subject counts
    yield envelope(statement("pkg:npm/scope0/lit@1.0", "pkg:npm/scope1/x"))  # two anchors
    yield envelope(statement("pkg:npm/%%bad", "pkg::"))  # malformed PURLs
    yield envelope(statement("pkg:NPM/Scope0/Up@1"))  # case: the PURL rules decide
    yield envelope(b'{"not": "a statement"}')
    yield envelope(statement("pkg:npm/scope0/typed"), "application/json")
    yield envelope(b'{"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": 5}]}')


def build(store: Store) -> tuple[KeyManager, list[uuid.UUID]]:
    spki = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = (
        KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    fp = fingerprint_of_spki(spki)
    ids = []
    with store.transaction() as tx:
        tx.insert_key(KeyRecord("k", "ed25519", pem, fp, T0, None, None, KeyOrigin.IMPORTED))
        for n, pattern in enumerate(PATTERNS):
            aid = uuid.UUID(int=n + 1)
            ids.append(aid)
            entry = KeyHistoryEntry(aid, "k", "ed25519", pem, fp, T0)
            tx.insert_anchor(
                TrustAnchor(aid, pattern, ("evidence.stella/v1",), "v1", T0, (entry,)),
                PurlPattern.parse(pattern).index_key,
            )
        for i, body in enumerate(payloads()):
            digest = "sha256:" + __import__("hashlib").sha256(body).hexdigest()
            tx.put_proof(ProofRecord(digest, body, T0 + timedelta(hours=i + 1)))
    return KeyManager(store, clock=FrozenClock(NOW)), ids


def reference(km: KeyManager, aid: uuid.UUID) -> tuple[int, int]:
    """The status counts as computed before the index: every proof of the home, strictly."""
    pattern = PurlPattern.parse(km.get_anchor(aid).purl_pattern)
    total = verified = 0
    with km.store.read() as tx:
        proofs = list(tx.iter_proofs())
    for proof in proofs:
        env = Envelope.from_json(proof.envelope_json)
        purl = next((p for p in subject_purls(env) if safe_match(pattern, p)), None)
        if purl is not None:
            total += 1
            verified += km.verify(env, purl=purl, at=proof.created_at).ok
    return total, verified


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = SqliteStore(tmp_path / "s.db") if request.param == "sqlite" else MemoryStore()
    yield s
    s.close()


def test_status_through_the_index_equals_reading_every_proof(store: Store) -> None:
    km, ids = build(store)
    seen = []
    for aid in ids:
        status = km.anchor_status(aid)
        assert (status.proofs_total, status.proofs_verified) == reference(km, aid)
        seen.append(status.proofs_total)
    assert seen[0] > 0 and seen[1] > 0 and seen[4] > seen[0]  # the home is not trivial


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_status_read_in_chunks_counts_every_proof_once(
    store: Store, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """anchor_status reads an anchor's proofs in chunks (one short read transaction each,
    flat memory at a million proofs): whatever the chunk size, and whatever the share of
    candidates a chunk drops, the counts are the ones of reading every proof at once."""
    import stellakeys.manager_anchors as manager_anchors

    km, ids = build(store)
    monkeypatch.setattr(manager_anchors, "_STATUS_CHUNK", chunk)
    chunks: list[int] = []
    real_read = store.read

    def counting_read() -> Any:
        chunks.append(0)
        return real_read()

    for aid in ids:
        chunks.clear()
        monkeypatch.setattr(store, "read", counting_read)
        status = km.anchor_status(aid)
        monkeypatch.setattr(store, "read", real_read)
        assert (status.proofs_total, status.proofs_verified) == reference(km, aid)
        # The anchor, its compromises, then at least one read per chunk of its proofs.
        assert len(chunks) >= 2 + -(-status.proofs_total // chunk), (len(chunks), status)


@pytest.mark.parametrize("chunk", [2, 1000])
def test_status_reads_one_change_token_per_chunk(
    store: Store, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk is judged under one change token (StoreVerifier.one_token), not one read
    per proof: a PostgreSQL round trip each. Fails if a chunk's verifications read their own."""
    import stellakeys.manager_anchors as manager_anchors

    km, ids = build(store)
    monkeypatch.setattr(manager_anchors, "_STATUS_CHUNK", chunk)
    reads: list[object] = []
    real = store.change_token

    def counting() -> object:
        reads.append(real())
        return reads[-1]

    monkeypatch.setattr(store, "change_token", counting)
    with store.read() as tx:
        candidates = len(list(tx.iter_proof_candidates("")))  # "*": every proof of the home
    status = km.anchor_status(ids[4])
    assert status.proofs_total > 4 * chunk or chunk == 1000
    pages = -(-candidates // chunk) + 1  # a last, empty page may follow a full one
    assert 1 <= len(reads) <= pages, (len(reads), candidates)
    assert len(reads) < status.proofs_total


def test_the_store_reads_only_the_anchors_proofs(tmp_path: Path) -> None:
    km, ids = build(SqliteStore(tmp_path / "s.db"))
    for aid in ids[:2]:
        pattern = PurlPattern.parse(km.get_anchor(aid).purl_pattern)
        with km.store.read() as tx:
            every = len(list(tx.iter_proofs()))
            candidates = list(tx.iter_proof_candidates(pattern.index_key))
        assert len(candidates) == km.anchor_status(aid).proofs_total < every / 2
    km.close()


def test_a_proof_written_behind_put_proofs_back_is_still_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    km, ids = build(SqliteStore(path))
    before = km.anchor_status(ids[0]).proofs_total
    body = envelope(statement("pkg:npm/scope0/sneaky@1"))
    digest = "sha256:" + __import__("hashlib").sha256(body).hexdigest()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO proofs (digest, envelope_json, created_at) VALUES (?, ?, ?)",
        (digest, body, codec.to_micros(T0 + timedelta(days=1))),
    )
    conn.close()
    status = km.anchor_status(ids[0])
    assert status.proofs_total == before + 1
    assert (status.proofs_total, status.proofs_verified) == reference(km, ids[0])
    km.close()


def test_a_home_from_before_the_index_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    km, ids = build(SqliteStore(path))
    expected = [reference(km, aid) for aid in ids]
    km.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "DROP TRIGGER proofs_queue_for_index; DROP TABLE proof_subject_keys;"
        " DROP TABLE proofs_unindexed; DELETE FROM schema_migrations WHERE version ="
        " (SELECT max(version) FROM schema_migrations);"
    )
    conn.close()
    km = KeyManager(SqliteStore(path), clock=FrozenClock(NOW))  # migrates: every proof queued
    got = [km.anchor_status(aid) for aid in ids]
    assert [(s.proofs_total, s.proofs_verified) for s in got] == expected
    km.close()


def test_index_keys_follow_the_strict_reading() -> None:
    assert proof_index_keys(envelope(statement("pkg:npm/scope0/a@1"))) >= {
        "pkg:npm",
        "pkg:npm/scope0",
    }
    assert proof_index_keys(b"{not json") == set()
    assert proof_index_keys(envelope(statement("pkg:npm/scope0/a"), "application/json")) == set()
    assert proof_index_keys(envelope(statement("pkg::", "pkg:/x"))) == set()
    dup = b'{"payload":"e30=","payload":"e30=","payloadType":"x","signatures":[]}'
    assert proof_index_keys(dup) == set()

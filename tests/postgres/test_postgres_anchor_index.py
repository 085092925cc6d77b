"""``anchor status`` through the subject index on PostgreSQL (migration 0009): the same
answer as reading every proof, reading only the anchor's proofs, and a proof inserted behind
put_proof's back still counted (tests/test_audit_perf_anchor_status.py for SQLite)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import psycopg
from test_audit_perf_anchor_status import T0, build, envelope, reference, statement

from stellakeys.purl_pattern import PurlPattern
from stellakeys.storage.postgres import PostgresStore


def test_postgres_status_through_the_index(clean_url: str) -> None:
    km, ids = build(PostgresStore(clean_url))
    try:
        for aid in ids:
            status = km.anchor_status(aid)
            assert (status.proofs_total, status.proofs_verified) == reference(km, aid)
        pattern = PurlPattern.parse(km.get_anchor(ids[0]).purl_pattern)
        with km.store.read() as tx:
            every = len(list(tx.iter_proofs()))
            candidates = len(list(tx.iter_proof_candidates(pattern.index_key)))
        assert candidates == km.anchor_status(ids[0]).proofs_total < every / 2
        body = envelope(statement("pkg:npm/scope0/sneaky@1"))
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with psycopg.connect(clean_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO signer.proofs (digest, envelope_json, created_at) VALUES (%s, %s, %s)",
                (digest, body, T0 + timedelta(days=1)),
            )
        status = km.anchor_status(ids[0])
        assert status.proofs_total == candidates + 1
        assert (status.proofs_total, status.proofs_verified) == reference(km, ids[0])
    finally:
        km.close()

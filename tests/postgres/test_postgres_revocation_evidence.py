"""PostgreSQL: the schema half of issue 14 (#5, #8) on a real server. The conformance suite
(test_storage_postgres.py) covers the adapter's refusals; these tests go behind its back with
SQL, as an insider with a psql session would."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from storage_conformance import PEM

from stellakeys.anchors import COMPROMISE
from stellakeys.clock import FrozenClock
from stellakeys.errors import ProofIntegrityError
from stellakeys.manager import KeyManager
from stellakeys.revocation import legacy_reason
from stellakeys.storage.ports import ProofRecord
from stellakeys.storage.postgres import PostgresStore, load_postgres_migrations, migrate

T0 = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def url(fresh_url: str) -> str:
    """A database of its own: these tests drop triggers."""
    PostgresStore.connect(fresh_url, migrate=True).close()
    return fresh_url


@pytest.fixture
def km(url: str) -> Iterator[KeyManager]:
    manager = KeyManager(PostgresStore.connect(url), clock=FrozenClock(T0), actor="tester")
    yield manager
    manager.close()


def revoked_anchor(km: KeyManager) -> uuid.UUID:
    km.import_key("k", PEM)
    anchor = km.create_anchor("pkg:npm/*", ["k"], ["evidence.stella/v1"])
    km.revoke_key(anchor.anchor_id, "k", "compromise", T0 + DAY)
    return anchor.anchor_id


@pytest.mark.parametrize(
    "attack",
    [
        "UPDATE signer.key_history SET revoked_at = NULL",
        "UPDATE signer.key_history SET revoked_at = NULL, revoke_reason = NULL",
        "UPDATE signer.key_history SET revoke_reason = 'superseded'",
        "UPDATE signer.key_history SET revoke_reason = 'Compromised'",
        "UPDATE signer.key_history SET revoked_at = revoked_at + interval '1 microsecond'",
        "UPDATE signer.key_history SET added_at = added_at - interval '1 day'",
    ],
)
def test_key_history_refuses_unrevocation_and_downgrade(
    km: KeyManager, url: str, attack: str
) -> None:
    anchor_id = revoked_anchor(km)
    with pytest.raises(psycopg.errors.IntegrityError):
        sql(url, attack)
    sql(url, "UPDATE signer.key_history SET revoked_at = revoked_at - interval '1 second'")
    entry = km.get_anchor(anchor_id).entry("k")
    assert entry is not None and entry.revoke_reason == COMPROMISE
    assert entry.revoked_at == T0 + DAY - timedelta(seconds=1)


def test_proofs_are_append_only(km: KeyManager, url: str) -> None:
    body = b'{"payload":"","payloadType":"x","signatures":[]}'
    record = ProofRecord("sha256:" + hashlib.sha256(body).hexdigest(), body, T0)
    with km.store.transaction() as tx:
        tx.put_proof(record)
        tx.add_proof_timestamp(record.digest, b"token")
    for attack in (
        "UPDATE signer.proofs SET envelope_json = 'x'::bytea",
        "DELETE FROM signer.proofs",
        "TRUNCATE signer.proofs CASCADE",
        "UPDATE signer.proof_timestamps SET token = 'x'::bytea",
        "DELETE FROM signer.proof_timestamps",
    ):
        with pytest.raises(psycopg.errors.IntegrityError, match="append-only"):
            sql(url, attack)
    with km.store.read() as tx:
        assert tx.get_proof(record.digest) == ProofRecord(record.digest, body, T0, (b"token",))


def test_a_replaced_stored_proof_fails_naming_both_digests(km: KeyManager, url: str) -> None:
    bodies = [b'{"n":1}', b'{"n":2}']
    digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in bodies]
    with km.store.transaction() as tx:
        for d, b in zip(digests, bodies, strict=True):
            tx.put_proof(ProofRecord(d, b, T0))
    sql(url, "ALTER TABLE signer.proofs DISABLE TRIGGER proofs_no_update")
    sql(
        url,
        "UPDATE signer.proofs SET envelope_json = %s WHERE digest = %s",
        (bodies[1], digests[0]),
    )
    with pytest.raises(ProofIntegrityError) as raised, km.store.read() as tx:
        tx.get_proof(digests[0])
    assert digests[0] in str(raised.value) and digests[1] in str(raised.value)
    with pytest.raises(ProofIntegrityError), km.store.read() as tx:
        list(tx.iter_proofs())


def test_audit_verify_detects_an_unrevocation_with_the_triggers_dropped(
    km: KeyManager, url: str
) -> None:
    anchor_id = revoked_anchor(km)
    assert km.verify_audit().ok
    sql(url, "ALTER TABLE signer.key_history DISABLE TRIGGER key_history_only_stricter")
    sql(url, "UPDATE signer.key_history SET revoked_at = NULL, revoke_reason = NULL")
    result = km.verify_audit()
    assert not result.ok and result.broken_at is None
    text = "\n".join(result.state_differences)
    assert f"key_history {anchor_id}/k: revokeReason" in text
    assert f"key_history {anchor_id}/k: revokedAt" in text


LEGACY_TEXTS = [
    "compromise",
    "Compromised",
    "key-compromise",
    "KEY_COMPROMISE",
    "keyCompromise",
    "Annual Rotation",
    "superseded",
    "cessationOfOperation",
    "retired after the audit",
    "private key found in CI logs, compromised",
]


def test_migration_normalises_free_text_reasons_like_legacy_reason(fresh_url: str) -> None:
    (ours,) = [m for m in load_postgres_migrations() if m.name == "revocation_evidence"]
    before = [m for m in load_postgres_migrations() if m.version < ours.version]
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        migrate(conn, before)
    aid = uuid.uuid4()
    sql(
        fresh_url,
        "INSERT INTO signer.trust_anchors (id, purl_pattern, policy_version, index_key)"
        " VALUES (%s, 'pkg:npm/*', 'v1', 'npm')",
        (aid,),
    )
    for i, text in enumerate(LEGACY_TEXTS):
        sql(
            fresh_url,
            "INSERT INTO signer.key_history (anchor_id, key_id, public_key, algorithm,"
            " fingerprint, revoked_at, revoke_reason, metadata)"
            " VALUES (%s, %s, 'pem', 'ed25519', 'fp', now(), %s, %s::jsonb)",
            (aid, f"k{i}", text, None if i % 2 else '{"ticket": "T-1"}'),
        )
    PostgresStore.connect(fresh_url, migrate=True).close()
    rows = dict(
        (r[0], (r[1], r[2]))
        for r in sql(fresh_url, "SELECT key_id, revoke_reason, metadata FROM signer.key_history")
    )
    for i, text in enumerate(LEGACY_TEXTS):
        reason, metadata = rows[f"k{i}"]
        assert reason == legacy_reason(text).value, text
        if text != reason:
            assert metadata["revokeReasonText"] == text
        if i % 2 == 0:
            assert metadata["ticket"] == "T-1"

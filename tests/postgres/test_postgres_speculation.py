"""Strict mode with the change-token read sent ahead (decision 0027).

A warm verification on PostgreSQL sends the counter read when it starts, verifies against the
cached anchors meanwhile, and collects the read before returning: the result stands only if
the counter equals the token the caches were built under. The promise these tests hold it to:
a revocation committed before a verification starts is always refused, including when the
commit lands between the caches being filled and the read being sent (the speculative pass
then *does* compute a wrong "ok" from the stale cache, and the confirmation must discard it),
and a commit while the read is in flight is seen exactly when the read's snapshot counted it.
Verification times are fixed datetimes, never today's date."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pg_server import PgBouncer

from stellakeys import Statement, Subject
from stellakeys.clock import FrozenClock
from stellakeys.crypto import get_algorithm
from stellakeys.dsse import sign_envelope
from stellakeys.manager import KeyManager
from stellakeys.storage.postgres import PostgresStore
from stellakeys.store_source import StoreSource, _Speculation

T0 = datetime(2024, 3, 1, tzinfo=UTC)
AT = T0 + timedelta(days=1)  # the proofs' asserted signing time
LOOPS = 25


class Harness:
    """A verifier store (hooks around its sends) and a writer store on the same database."""

    def __init__(self, url: str, verifier_url: str | None = None, **options: Any) -> None:
        self.writer = KeyManager(PostgresStore.connect(url), clock=FrozenClock(T0), actor="t")
        self.store = PostgresStore.connect(verifier_url or url, **options)
        self.sync_reads = 0
        #: Runs around each send: before(), the real send, after(pending).
        self.before: Callable[[], None] = lambda: None
        self.after: Callable[[], None] = lambda: None
        self.collected: list[int | None] = []
        real_send, real_token = self.store.send_change_token, self.store.change_token

        def send() -> Any:
            self.before()
            pending = real_send()
            self.after()
            return None if pending is None else _Recording(pending, self.collected)

        def change_token() -> int:
            self.sync_reads += 1
            return real_token()

        # Instance attributes, set before the KeyManager's StoreSource captures them.
        self.store.send_change_token = send  # type: ignore[method-assign]
        self.store.change_token = change_token  # type: ignore[method-assign]
        self.verifier = KeyManager(self.store, clock=FrozenClock(T0))
        self.n = 0

    def new_anchor(self) -> tuple[str, str, bytes]:
        """A fresh key and anchor (written by the writer) and a proof it covers, verified
        warm by the verifier: (anchor id, key id, proof)."""
        self.n += 1
        signer = get_algorithm("ed25519").generate()
        key_id = f"k{self.n}"
        self.writer.import_key(key_id, signer.public_key().to_pem())
        anchor = self.writer.create_anchor(f"pkg:npm/acme{self.n}/*", [key_id], ["evidence/v1"])
        statement = Statement(
            (Subject(f"pkg:npm/acme{self.n}/app@1.0.0", {"sha256": "ab" * 32}),),
            "evidence/v1",
            {},
        )
        env = sign_envelope("application/vnd.in-toto+json", statement.to_json(), [signer], [key_id])
        blob = env.to_json()
        assert self.verifier.verify(blob, at=AT).ok  # a miss: the anchor is read and cached
        reads = self.sync_reads
        assert self.verifier.verify(blob, at=AT).ok  # warm: answered speculatively
        assert self.sync_reads == reads, "the warm path waited for a synchronous token read"
        return str(anchor.anchor_id), key_id, blob

    def revoke(self, anchor_id: str, key_id: str) -> int:
        """Revoke as compromised (from before the proofs) and commit; the counter after."""
        self.writer.revoke_key(anchor_id, key_id, "compromise", T0)
        return self.writer.store.change_token()

    def close(self) -> None:
        self.verifier.close()
        self.writer.close()


class _Recording:
    def __init__(self, pending: Any, out: list[int | None]) -> None:
        self._pending, self._out = pending, out

    def result(self) -> int | None:
        value: int | None = self._pending.result()
        self._out.append(value)
        return value

    def discard(self) -> None:
        self._pending.discard()


@pytest.fixture
def harness(clean_url: str) -> Iterator[Harness]:
    h = Harness(clean_url)
    try:
        yield h
    finally:
        h.close()


def commit_before_send(h: Harness) -> bool:
    """The revocation commits after the caches were filled and before the verification's read
    is sent (so before it starts, as far as the server can tell): the verification's result."""
    anchor_id, key_id, blob = h.new_anchor()
    h.before = lambda: h.revoke(anchor_id, key_id) and None
    try:
        return h.verifier.verify(blob, at=AT).ok
    finally:
        h.before = lambda: None


def test_a_revocation_committed_before_the_verification_is_always_refused(
    harness: Harness,
) -> None:
    for _ in range(LOOPS):
        anchor_id, key_id, blob = harness.new_anchor()
        harness.revoke(anchor_id, key_id)  # committed and returned: the next verify starts after
        assert not harness.verifier.verify(blob, at=AT).ok
    for _ in range(LOOPS):
        assert not commit_before_send(harness)


def test_without_the_confirmation_the_stale_cache_would_answer_ok(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: with confirm() accepting whatever the token says, the scenario above
    yields the wrong "ok" (so that test fails if the confirmation is skipped or weakened)."""

    def blind(self: _Speculation) -> bool:
        self._pending.result()
        return True

    monkeypatch.setattr(_Speculation, "confirm", blind)
    assert commit_before_send(harness)


def test_a_commit_while_the_read_is_in_flight_is_seen_exactly_when_the_read_counted_it(
    harness: Harness,
) -> None:
    """The revocation commits after the read was sent (the verification has started): the
    result may reflect the old state, but only if the read's snapshot did not count the
    commit; if it did, the verification must refuse. Checked precisely, loop after loop."""
    for i in range(LOOPS):
        anchor_id, key_id, blob = harness.new_anchor()
        committed: list[int] = []

        def revoke_in_flight(
            anchor_id: str = anchor_id,
            key_id: str = key_id,
            pause: float = 0.002 * (i % 2),  # let the server answer the read first, some loops
            committed: list[int] = committed,
        ) -> None:
            time.sleep(pause)
            committed.append(harness.revoke(anchor_id, key_id))

        harness.after = revoke_in_flight
        harness.collected.clear()
        try:
            ok = harness.verifier.verify(blob, at=AT).ok
        finally:
            harness.after = lambda: None
        (counted,) = harness.collected[:1]
        assert counted is not None
        assert ok == (counted < committed[0]), (ok, counted, committed)
        # Started after the commit: refused, whatever the speculation saw.
        assert not harness.verifier.verify(blob, at=AT).ok


def test_the_connection_lost_mid_flight_never_gives_a_wrong_ok(harness: Harness) -> None:
    """Every backend of the verifier (the read in flight, the pool, the synchronous reader)
    is terminated right after the read was sent, and the revocation committed before it: the
    verification refuses, and the store goes on working on reopened connections."""
    anchor_id, key_id, blob = harness.new_anchor()
    _, _, other = harness.new_anchor()
    admin = psycopg.connect(harness.writer.store._url, autocommit=True)  # type: ignore[attr-defined]

    def terminate() -> None:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    try:
        harness.before = lambda: harness.revoke(anchor_id, key_id) and None
        harness.after = terminate
        assert not harness.verifier.verify(blob, at=AT).ok
        harness.before = harness.after = lambda: None
        assert not harness.verifier.verify(blob, at=AT).ok
        assert harness.verifier.verify(other, at=AT).ok
        harness.new_anchor()  # the writer reconnects too, and the warm path is back
    finally:
        admin.close()


def test_through_pgbouncer_the_unnamed_statement_is_sent_ahead(
    clean_url: str, pgbouncer: PgBouncer
) -> None:
    h = Harness(clean_url, pgbouncer.url_for(clean_url), pooler="transaction")
    try:
        for _ in range(5):
            anchor_id, key_id, blob = h.new_anchor()
            h.revoke(anchor_id, key_id)
            assert not h.verifier.verify(blob, at=AT).ok
            assert not commit_before_send(h)
        assert all(c is not None for c in h.collected)
    finally:
        h.close()


def test_max_staleness_sends_nothing_ahead(clean_url: str) -> None:
    store = PostgresStore.connect(clean_url, max_staleness=1.0)
    try:
        assert store.send_change_token() is None
        source = StoreSource(store)
        source.universal()
        assert source.speculate() is None  # the bounded mode's token is a memory read
    finally:
        store.close()


def test_concurrent_verifications_each_send_their_own_read(harness: Harness) -> None:
    blobs = [harness.new_anchor()[2] for _ in range(4)]
    failures: list[str] = []

    def work(blob: bytes) -> None:
        for _ in range(200):
            if not harness.verifier.verify(blob, at=AT).ok:
                failures.append("refused")

    threads = [threading.Thread(target=work, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert 1 <= len(harness.store._ahead) <= len(threads)  # one reader per verification in flight


def test_reads_sent_ahead_hold_at_most_max_size_connections(clean_url: str) -> None:
    """A server with many verifying threads must not open a connection per thread: beyond
    ``max_size`` reads in flight, a verification reads its token synchronously (as strict),
    and a reader given back is reused, not reopened."""
    store = PostgresStore.connect(clean_url, max_size=2)
    try:
        first, second = store.send_change_token(), store.send_change_token()
        assert first is not None and second is not None
        assert store.send_change_token() is None  # both connections busy: none opened
        counter = store.change_token()  # the synchronous read still answers
        assert first.result() == counter
        first.discard()
        again = store.send_change_token()  # the reader given back, not a third connection
        assert again is not None and again.result() == counter
        again.discard()
        second.discard()
        # Both readers idle again: two sends find them, and a third is refused again (had
        # discard() leaked a slot, or a send opened a new reader, this would differ).
        kept = [store.send_change_token(), store.send_change_token()]
        assert all(p is not None for p in kept)
        assert store.send_change_token() is None
        for p in kept:
            assert p is not None
            p.discard()
    finally:
        store.close()

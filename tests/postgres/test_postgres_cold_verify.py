"""Cold verification by address on PostgreSQL: one statement per proof (decision 0030).

``StoreVerifier.verify("sha256:...")`` on a strict PostgresStore reads the proof, its tokens
and the change counter in one autocommit statement (``PostgresStore.read_proof_and_token``)
and runs the verification pinned to that counter: no read transaction, no token read, nothing
sent ahead. What must hold, each checked here against a real server (directly and through
PgBouncer in transaction mode):

* one statement per cold verify by address, counted in the server's own statement log;
* a revocation committed by another connection before the verify is refused (the counter is
  read after the verification started, in the proof's snapshot) — and a counter *not* read
  with the proof (a stale one) would have answered "ok" (mutation check);
* a proof row changed in the database is caught (the bytes must hash to the address);
* the pin ends with its verification: the next one on the thread reads its own token
  (mutation check: a pin that leaks makes a later verification answer "ok" after a revocation);
* threads verifying at once each get their own pin and see every committed revocation.

Verification times are fixed datetimes, never today's date.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_server import PgBouncer, PostgresServer

from stellakeys import Statement, Subject
from stellakeys.clock import FrozenClock
from stellakeys.crypto import PrivateKey, get_algorithm
from stellakeys.dsse import sign_envelope
from stellakeys.errors import NotFoundError, ProofIntegrityError, StorageError
from stellakeys.manager import KeyManager
from stellakeys.storage.ports import ProofRecord
from stellakeys.storage.postgres import PostgresStore
from stellakeys.store_source import _Pin
from stellakeys.store_verifier import StoreVerifier

T0 = datetime(2024, 3, 1, tzinfo=UTC)
AT = T0 + timedelta(days=1)  # the proofs' asserted signing time
NOW = T0 + timedelta(days=30)
PREDICATE = "evidence/v1"
_names = itertools.count()


class World:
    """A writer (KeyManager on its own store) and a verifier (StoreVerifier on another store,
    possibly through PgBouncer) on one database, with anchors, keys and stored proofs."""

    def __init__(self, url: str, verifier_url: str | None = None, **options: Any) -> None:
        self.url = url
        self.writer = KeyManager(PostgresStore.connect(url), clock=FrozenClock(T0), actor="t")
        self.store = PostgresStore.connect(verifier_url or url, **options)
        self.token_reads = 0
        self.sends = 0
        real_token, real_send = self.store.change_token, self.store.send_change_token

        def change_token() -> int:
            self.token_reads += 1
            return real_token()

        def send() -> Any:
            self.sends += 1
            return real_send()

        # Instance attributes, set before the StoreVerifier's StoreSource captures them.
        self.store.change_token = change_token  # type: ignore[method-assign]
        self.store.send_change_token = send  # type: ignore[method-assign]
        self.verifier = StoreVerifier(self.store)
        self.n = 0
        self.keys: dict[str, tuple[str, str, PrivateKey]] = {}  # scope -> anchor id, key id, key

    def new_anchor(self) -> str:
        """A fresh key and an anchor ``pkg:npm/acme<n>/*`` for it: the scope name."""
        self.n += 1
        key = get_algorithm("ed25519").generate()
        key_id = f"k{self.n}"
        self.writer.import_key(key_id, key.public_key().to_pem())
        anchor = self.writer.create_anchor(f"pkg:npm/acme{self.n}/*", [key_id], [PREDICATE])
        scope = f"acme{self.n}"
        self.keys[scope] = (str(anchor.anchor_id), key_id, key)
        return scope

    def put(self, scope: str, name: str) -> tuple[str, bytes]:
        """A proof for ``pkg:npm/<scope>/<name>@1.0.0`` stored: (its address, its JSON)."""
        _, key_id, key = self.keys[scope]
        statement = Statement(
            (Subject(f"pkg:npm/{scope}/{name}@1.0.0", {"sha256": "ab" * 32}),), PREDICATE, {}
        )
        env = sign_envelope("application/vnd.in-toto+json", statement.to_json(), [key], [key_id])
        with self.writer.store.transaction() as tx:
            tx.put_proof(ProofRecord(env.digest(), env.to_json(), T0, ()))
        return env.digest(), env.to_json()

    def revoke(self, scope: str) -> None:
        """Revoke the scope's key as compromised from before every proof; committed."""
        anchor_id, key_id, _ = self.keys[scope]
        self.writer.revoke_key(anchor_id, key_id, "compromise", T0)

    def ok(self, proof: str | bytes) -> bool:
        return self.verifier.verify(proof, now=NOW, at=AT).ok

    def close(self) -> None:
        self.verifier.close()
        self.writer.close()


@pytest.fixture
def world(clean_url: str) -> Iterator[World]:
    w = World(clean_url)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(params=["direct", "pgbouncer"])
def world_through(
    request: pytest.FixtureRequest, clean_url: str, pgbouncer: PgBouncer
) -> Iterator[World]:
    """A World whose verifier reaches the database directly, or through PgBouncer in
    transaction mode (no named prepared statements held across transactions)."""
    if request.param == "pgbouncer":
        w = World(clean_url, pgbouncer.url_for(clean_url), pooler="transaction")
    else:
        w = World(clean_url)
    try:
        yield w
    finally:
        w.close()


# --- one statement per proof ----------------------------------------------------------------


class StatementLog:
    """The statements sessions on one database send, from the server's own log
    (``log_statement = all`` set on that database only, so other databases log nothing)."""

    def __init__(self, server: PostgresServer, url: str) -> None:
        self.path = Path(server.base) / "server.log"
        dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE \"{dbname}\" SET log_statement = 'all'")
        self.offset = 0

    def mark(self) -> None:
        self.offset = os.path.getsize(self.path)

    def since_mark(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        # One line per statement: "LOG:  statement: ..." (simple query) or "LOG:  execute
        # <name>: ..." (extended protocol); parameters follow on DETAIL lines.
        return [
            line
            for line in text.splitlines()
            if "LOG:  statement: " in line or ("LOG:  execute " in line)
        ]


@pytest.fixture
def logged_url(pg_server: PostgresServer) -> str:
    """A database of its own whose sessions log every statement."""
    url = pg_server.create_database(f"logged_{os.getpid()}_{next(_names)}")
    PostgresStore.connect(url, migrate=True).close()
    return url


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_a_cold_verify_by_address_is_one_statement(
    pg_server: PostgresServer, logged_url: str, pgbouncer: PgBouncer, through: str
) -> None:
    log = StatementLog(pg_server, logged_url)
    options: dict[str, Any] = {}
    verifier_url = logged_url
    if through == "pgbouncer":
        verifier_url, options = pgbouncer.url_for(logged_url), {"pooler": "transaction"}
    w = World(logged_url, verifier_url, **options)
    try:
        scope = w.new_anchor()
        proofs = [w.put(scope, f"app{i}")[0] for i in range(40)]
        for digest in proofs[:10]:  # warm up: the anchor cached, psycopg's preparation done
            assert w.ok(digest)
        reads, sends = w.token_reads, w.sends
        log.mark()
        for digest in proofs[10:]:  # each a new PURL under the cached anchor, verified once
            assert w.ok(digest)
        logged = log.since_mark()
        assert (w.token_reads, w.sends) == (reads, sends), "a separate change-token read"
        # A connection psycopg_pool opens meanwhile (it fills and replaces connections from a
        # background thread, whenever the machine lets it) sends its session setup: not a
        # round trip of any verification, but one per verification would be, so few allowed.
        setups = [s for s in logged if "SET TimeZone TO 'UTC'" in s]
        statements = [s for s in logged if s not in setups]
        assert len(setups) <= 2, logged
        assert len(statements) == len(proofs) - 10, logged
        assert all("signer.store_state" in s and "signer.proofs" in s for s in statements)
    finally:
        w.close()


def test_read_proof_is_one_statement_and_refuses_to_nest(world: World) -> None:
    scope = world.new_anchor()
    digest, blob = world.put(scope, "app")
    record = world.store.read_proof(digest)
    assert record is not None and bytes(record.envelope_json) == blob
    with world.store.read() as tx:
        assert tx.get_proof(digest) == record
        with pytest.raises(StorageError, match="do not nest"):
            world.store.read_proof(digest)
        with pytest.raises(StorageError, match="do not nest"):
            world.store.read_proof_and_token(digest)
    assert world.store.read_proof("sha256:" + "00" * 32) is None
    with pytest.raises(NotFoundError):
        world.verifier.verify("sha256:" + "00" * 32, now=NOW)
    with psycopg.connect(world.url, autocommit=True) as conn:
        (counter,) = conn.execute(
            "SELECT change_counter FROM signer.store_state WHERE id = 1"
        ).fetchone() or (None,)
    assert world.store.read_proof_and_token(digest) == (record, counter)


def test_the_proof_and_its_tokens_in_order(world: World) -> None:
    scope = world.new_anchor()
    digest, _ = world.put(scope, "app")
    for token in (b"\x30\x03first", b"\x30\x03second", b"\x30\x03third"):
        with world.writer.store.transaction() as tx:
            tx.add_proof_timestamp(digest, token)
    record, _ = world.store.read_proof_and_token(digest)
    assert record is not None
    assert record.timestamp_tokens == (b"\x30\x03first", b"\x30\x03second", b"\x30\x03third")


# --- strict: a revocation committed before the verify is refused --------------------------


def test_a_revocation_committed_before_the_verify_is_refused(world: World) -> None:
    for _ in range(15):
        scope = world.new_anchor()
        seen, _ = world.put(scope, "seen")
        new, _ = world.put(scope, "new")
        assert world.ok(seen)  # the anchor and its keys are cached under the current token
        world.revoke(scope)  # another connection commits; the next verify starts after
        assert not world.ok(seen)  # the same PURL (a per-PURL cache hit before)
        assert not world.ok(new)  # a new PURL under the cached anchor


def test_a_token_not_read_with_the_proof_would_answer_ok(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: a verification pinned to a counter read before the revocation (not in
    the proof's snapshot) answers "ok": so the test above fails if the pinned token is not
    read with the proof, after the verification started."""
    scope = world.new_anchor()
    seen, _ = world.put(scope, "seen")
    assert world.ok(seen)
    stale = world.store.change_token()
    real = world.store.read_proof_and_token

    def stale_token(digest: str) -> tuple[ProofRecord | None, int | None]:
        return real(digest)[0], stale

    monkeypatch.setattr(world.verifier, "_read_pinned", stale_token)
    world.revoke(scope)
    assert world.ok(seen)


def test_max_staleness_is_unchanged(clean_url: str) -> None:
    """With max_staleness the store gives no token with the proof (change_token() is a memory
    read there): the verification reads it as before, and still refuses after the bound."""
    w = World(clean_url, max_staleness=0.05)
    try:
        scope = w.new_anchor()
        digest, _ = w.put(scope, "app")
        assert w.store.read_proof_and_token(digest)[1] is None
        reads = w.token_reads
        assert w.ok(digest)
        assert w.token_reads > reads
    finally:
        w.close()


# --- integrity ------------------------------------------------------------------------------


def test_a_proof_row_changed_in_the_database_is_caught(
    world_through: World, clean_url: str
) -> None:
    w = world_through
    scope = w.new_anchor()
    digest, blob = w.put(scope, "app")
    assert w.ok(digest)
    # A hostile database writer: another payload under the old address (the append-only
    # triggers do not fire in a replication session; superuser only).
    forged = blob.replace(b'"payload":"', b'"payload":"e30', 1)
    with psycopg.connect(clean_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            "UPDATE signer.proofs SET envelope_json = %s WHERE digest = %s", (forged, digest)
        )
    with pytest.raises(ProofIntegrityError):
        w.verifier.verify(digest, now=NOW, at=AT)
    with pytest.raises(ProofIntegrityError):
        w.store.read_proof(digest)


# --- the pin ends with its verification -----------------------------------------------------


def pinned_then_revoked_then_bytes(world: World) -> bool:
    """A verify by address (pinned), a revocation committed, then the same proof given as
    bytes on the same thread (its own token, sent ahead): that verification's result."""
    scope = world.new_anchor()
    digest, blob = world.put(scope, "app")
    assert world.ok(blob)  # the anchor cached
    assert world.ok(digest)  # pinned to the current counter
    world.revoke(scope)
    return world.ok(blob)


def test_the_pinned_token_is_not_reused_by_the_next_verification(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        assert not pinned_then_revoked_then_bytes(world)
    # A pinned verification that raises ends its pin too.
    digest = world.put(world.new_anchor(), "bad")[0]
    with monkeypatch.context() as m:

        def boom(*args: object) -> None:
            raise RuntimeError("boom")

        m.setattr(world.verifier.verifier, "_verify", boom)
        with pytest.raises(RuntimeError, match="boom"):
            world.verifier.verify(digest, now=NOW, at=AT)
    assert not pinned_then_revoked_then_bytes(world)


def test_a_pin_that_leaked_would_answer_ok(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: a pin left on the thread after its verification makes the next one
    answer from the stale token ("ok" after the revocation), so the test above fails if the
    pin leaks."""
    monkeypatch.setattr(_Pin, "__exit__", lambda self, *exc: None)
    assert pinned_then_revoked_then_bytes(world)


# --- threads --------------------------------------------------------------------------------


def one_round(w: World, threads_n: int) -> None:
    """Threads verify their own proofs (new PURLs) by address; the writer then revokes every
    other scope and commits; the threads then verify every scope's proofs: revoked ones refused,
    the others accepted, in every thread."""
    scopes = [w.new_anchor() for _ in range(threads_n)]
    own = [[w.put(s, f"t{i}-{j}")[0] for j in range(6)] for i, s in enumerate(scopes)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n + 1)
    results: dict[tuple[int, str], list[bool]] = {}

    def run(i: int) -> None:
        try:
            results[(i, "before")] = [w.ok(d) for d in own[i]]
            barrier.wait()  # the writer revokes the even scopes, then releases us
            barrier.wait()
            results[(i, "after")] = [w.ok(d) for k in range(threads_n) for d in own[k]]
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for t in workers:
        t.start()
    barrier.wait()
    for k in range(0, threads_n, 2):
        w.revoke(scopes[k])  # committed before any "after" verification starts
    barrier.wait()
    for t in workers:
        t.join(timeout=60)
    assert not errors, errors
    expected = [k % 2 == 1 for k in range(threads_n) for _ in own[k]]
    for i in range(threads_n):
        assert results[(i, "before")] == [True] * len(own[i])
        assert results[(i, "after")] == expected


def test_threads_verifying_by_address_see_every_committed_revocation(world_through: World) -> None:
    w = world_through
    for _ in range(4):
        one_round(w, 4)
    # By address, every verification was pinned: no token read, nothing sent ahead.
    assert (w.token_reads, w.sends) == (0, 0)


# --- one token for a block of verifications (anchor status) ----------------------------------


def test_one_token_reads_the_counter_once_for_the_whole_block(world: World) -> None:
    scope = world.new_anchor()
    proofs = [world.put(scope, f"p{i}") for i in range(4)]
    assert world.ok(proofs[0][1])  # the anchor cached
    world.token_reads = world.sends = 0
    with world.verifier.one_token():
        # By address too: the block's token, not one read with the proof (no nested pin).
        assert all(world.ok(digest) and world.ok(blob) for digest, blob in proofs)
    assert (world.token_reads, world.sends) == (1, 0)


def test_one_token_block_sees_what_was_committed_before_it_and_not_after(world: World) -> None:
    scope = world.new_anchor()
    (before, _), (during, _) = world.put(scope, "before"), world.put(scope, "during")
    assert world.ok(before)
    world.revoke(scope)
    with world.verifier.one_token():
        assert not world.ok(before)  # committed before the block's read: seen
    other = world.new_anchor()
    (a, _), (b, _) = world.put(other, "a"), world.put(other, "b")
    with world.verifier.one_token():
        assert world.ok(a)
        world.revoke(other)
        assert world.ok(b)  # judged as of the block's read, as documented
    assert not world.ok(b) and not world.ok(during)  # the next verification sees it

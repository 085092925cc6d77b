"""The shared SQL core (decision 0019) against the bare driver, on the storage hot paths.

Three arms run the *same* statements: the bare driver (``sqlite3`` / ``psycopg``, the floor
any layer sits on), our core, and -- when it is installed (``pip install "sqlalchemy>=2"``, the
``bench`` extra; it is not a dependency of stellakeys) -- SQLAlchemy Core 2.x, with the same
decoding into domain objects, so the gap between the last two is what each layer adds:
transaction context, checks, error mapping, result machinery. The header line says which
SQLAlchemy was measured.

Operations, each in its own read transaction, over random picks:

* temporal key lookup: the keys of anchor A valid at T. Layer: ``get_anchor(A)`` then
  ``valid_at(T)`` on SQLite; ``keys_valid_at(A, T)`` on PostgreSQL. Bare: the runbook's range
  query on ``idx_key_history_validity``;
* anchor by index key: ``anchors_by_index_keys`` with the keys a real PURL produces (one
  anchor and its 10 history rows come back) vs. the adapter's own statements;
* ``get_proof(digest)`` (a stored DSSE envelope and its timestamp tokens) vs. its statements.

Five rounds of ``--calls`` calls per operation, operations taking turns; p50 and p99 in
microseconds. Run: ``python benchmarks/bench_sql_core.py [--anchors N] [--postgres]``
(``--postgres`` starts a throwaway server, see tests/postgres/pg_server.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "postgres")]

import bench_verify as bv  # noqa: E402

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor  # noqa: E402
from stellakeys.crypto import get_algorithm  # noqa: E402
from stellakeys.purl import PurlPattern, lookup_keys_for, parse_purl  # noqa: E402
from stellakeys.storage import _codec as codec  # noqa: E402
from stellakeys.storage.ports import ProofRecord, Store  # noqa: E402

ROUNDS = 5

try:  # pragma: no cover - depends on the environment
    import sqlalchemy
except ImportError:
    sqlalchemy = None


def load(store: Store, anchors: int) -> list[str]:
    """``anchors`` anchors of 10 keys each (half revoked), and one proof per anchor."""
    alg = get_algorithm("ed25519")
    keys = [(f"key-{i}", alg.generate()) for i in range(bv.KEYS_PER_ANCHOR)]
    pems = [(kid, k.public_key().to_pem(), k.fingerprint) for kid, k in keys]
    digests = []
    with store.transaction() as tx:
        for i in range(anchors):
            aid = uuid.UUID(int=i + 1)
            pattern = PurlPattern.parse(f"pkg:npm/scope{i}/*")
            history = tuple(
                KeyHistoryEntry(
                    anchor_id=aid,
                    key_id=kid,
                    algorithm="ed25519",
                    public_key_pem=pem,
                    fingerprint=fp,
                    added_at=bv.START + timedelta(days=j),
                    revoked_at=bv.START + timedelta(days=30 + j) if j % 2 else None,
                    revoke_reason="annual-rotation" if j % 2 else None,
                )
                for j, (kid, pem, fp) in enumerate(pems)
            )
            tx.insert_anchor(
                TrustAnchor(aid, pattern.text, (bv.PREDICATE,), "v1", bv.START, history),
                pattern.index_key,
            )
            body = b'{"payload":"%d","payloadType":"text/plain","signatures":[]}' % i
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            tx.put_proof(ProofRecord(digest, body, bv.START, (b"token-%d" % i,)))
            digests.append(digest)
    return digests


def run_rounds(ops: dict[str, Callable[[int], Any]], calls: int) -> dict[str, tuple[float, float]]:
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for r in range(ROUNDS):
        for name, op in ops.items():
            for i in range(r * calls, (r + 1) * calls):
                started = time.perf_counter_ns()
                op(i)
                samples[name].append((time.perf_counter_ns() - started) / 1000)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (statistics.median(values), values[int(len(values) * 0.99) - 1])
    return out


def picks(
    anchors: int, n: int, digests: Sequence[str]
) -> list[tuple[uuid.UUID, Any, list[str], str]]:
    rng = random.Random(7)
    return [
        (
            uuid.UUID(int=rng.randrange(anchors) + 1),
            bv.START + timedelta(days=rng.uniform(0, 60)),
            lookup_keys_for(parse_purl(f"pkg:npm/scope{rng.randrange(anchors)}/pkg@1.0.0")),
            digests[rng.randrange(len(digests))],
        )
        for _ in range(n)
    ]


def sqlite_ops(path: Path, anchors: int, calls: int) -> dict[str, Callable[[int], Any]]:
    import sqlite3

    from stellakeys.storage import _sqlite_repos as repos
    from stellakeys.storage.sqlite import SqliteStore

    store = SqliteStore(path)
    digests = load(store, anchors)
    p = picks(anchors, ROUNDS * calls, digests)
    conn = sqlite3.connect(path, isolation_level=None)
    temporal = (
        f"SELECT {codec.HISTORY_COLUMNS} FROM key_history WHERE anchor_id = ? AND added_at <= ?"
        " AND (revoked_at IS NULL OR revoked_at > ?) AND (expires_at IS NULL OR expires_at > ?)"
    )

    def bare(fn: Callable[[], Any]) -> Any:
        conn.execute("BEGIN")
        try:
            return fn()
        finally:
            conn.execute("COMMIT")

    def raw_temporal(i: int) -> None:
        t = codec.to_micros(p[i][1])
        bare(lambda: conn.execute(temporal, (str(p[i][0]), t, t, t)).fetchall())

    def raw_by_index(i: int) -> None:
        def go() -> None:
            keys = p[i][2]
            rows = conn.execute(repos._anchors_by_index_sql(len(keys)), keys).fetchall()
            ids = [r[0] for r in rows]
            if ids:
                conn.execute(repos._history_of_anchors_sql(len(ids)), ids).fetchall()

        bare(go)

    def raw_proof(i: int) -> None:
        def go() -> None:
            d = p[i][3]
            conn.execute(
                f"SELECT {codec.PROOF_COLUMNS} FROM proofs WHERE digest = ?", (d,)
            ).fetchone()
            conn.execute(
                "SELECT token FROM proof_timestamps WHERE digest = ? ORDER BY id", (d,)
            ).fetchall()

        bare(go)

    def layer_temporal(i: int) -> None:
        with store.read() as tx:
            anchor = tx.get_anchor(p[i][0])
            assert anchor is not None
            [e for e in anchor.key_history if e.valid_at(p[i][1])]

    def layer_by_index(i: int) -> None:
        with store.read() as tx:
            tx.anchors_by_index_keys(p[i][2])

    def layer_proof(i: int) -> None:
        with store.read() as tx:
            tx.get_proof(p[i][3])

    ops: dict[str, Callable[[int], Any]] = {
        "temporal lookup: sqlite3": raw_temporal,
        "temporal lookup: core (get_anchor + valid_at)": layer_temporal,
        "anchor by index key: sqlite3": raw_by_index,
        "anchor by index key: core": layer_by_index,
        "get_proof: sqlite3": raw_proof,
        "get_proof: core": layer_proof,
    }
    if sqlalchemy is not None:
        ops.update(sqlalchemy_sqlite_ops(path, p))
    return ops


def sqlalchemy_sqlite_ops(path: Path, p: Sequence[Any]) -> dict[str, Callable[[int], Any]]:
    """The same three operations through SQLAlchemy Core 2.x: one engine and one connection
    (as our store keeps one per thread), one transaction per operation, the *same* statements
    (``text()`` with expanding IN parameters, compiled once and cached by SQLAlchemy) and the
    same decoding into domain objects with our codec. What SQLAlchemy would add is then its
    connection/transaction/result machinery, which is what this measures."""
    assert sqlalchemy is not None
    from sqlalchemy import bindparam, create_engine, text

    from stellakeys.storage import _sqlite_repos as repos

    engine = create_engine(f"sqlite:///{path}")
    conn = engine.connect()
    anchor_sql = text(
        f"{repos._SELECT_ANCHOR} WHERE index_key IN :keys AND active = 1 ORDER BY created_at, id"
    ).bindparams(bindparam("keys", expanding=True))
    history_sql = text(
        f"{repos._SELECT_HISTORY} WHERE anchor_id IN :ids{repos._HISTORY_ORDER}"
    ).bindparams(bindparam("ids", expanding=True))
    one_anchor_sql = text(f"{repos._SELECT_ANCHOR} WHERE id = :id")
    proof_sql = text(f"SELECT {codec.PROOF_COLUMNS} FROM proofs WHERE digest = :d")
    tokens_sql = text("SELECT token FROM proof_timestamps WHERE digest = :d ORDER BY id")

    def anchors(rows: Sequence[Any]) -> list[TrustAnchor]:
        if not rows:
            return []
        uuids = {r[0]: uuid.UUID(r[0]) for r in rows}
        history: dict[str, list[KeyHistoryEntry]] = {aid: [] for aid in uuids}
        for h in conn.execute(history_sql, {"ids": list(history)}):
            history[h[1]].append(codec.history_from_row(h, uuids[h[1]]))
        return [codec.anchor_from_row(r, tuple(history[r[0]]), uuids[r[0]]) for r in rows]

    def sa_temporal(i: int) -> None:
        with conn.begin():
            (anchor,) = anchors(conn.execute(one_anchor_sql, {"id": str(p[i][0])}).all())
            [e for e in anchor.key_history if e.valid_at(p[i][1])]

    def sa_by_index(i: int) -> None:
        with conn.begin():
            anchors(conn.execute(anchor_sql, {"keys": list(dict.fromkeys(p[i][2]))}).all())

    def sa_proof(i: int) -> None:
        with conn.begin():
            row = conn.execute(proof_sql, {"d": p[i][3]}).one()
            tokens = conn.execute(tokens_sql, {"d": p[i][3]}).all()
            codec.proof_from_row(row, tuple(bytes(t[0]) for t in tokens))

    return {
        "temporal lookup: SQLAlchemy Core": sa_temporal,
        "anchor by index key: SQLAlchemy Core": sa_by_index,
        "get_proof: SQLAlchemy Core": sa_proof,
    }


def postgres_ops(url: str, anchors: int, calls: int) -> dict[str, Callable[[int], Any]]:
    import psycopg

    from stellakeys.storage import _postgres_sql as pgsql
    from stellakeys.storage.postgres import PostgresStore, migrate_url

    migrate_url(url)
    store = PostgresStore.connect(url)
    digests = load(store, anchors)
    p = picks(anchors, ROUNDS * calls, digests)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET TimeZone TO 'UTC'; SET plan_cache_mode TO force_generic_plan")
    temporal = (
        f"SELECT {pgsql._HISTORY_SELECT} FROM signer.key_history AS h WHERE h.anchor_id = %(a)s"
        " AND h.added_at <= %(t)s AND (h.revoked_at IS NULL OR h.revoked_at > %(t)s)"
        " AND (h.expires_at IS NULL OR h.expires_at > %(t)s) ORDER BY h.added_at, h.key_id"
    )
    proof = (
        "SELECT p.digest, p.envelope_json, p.created_at, t.token FROM signer.proofs AS p"
        " LEFT JOIN signer.proof_timestamps AS t ON t.digest = p.digest"
        " WHERE p.digest = %s ORDER BY t.id"
    )

    def bare(sql: str, params: Any) -> None:
        with conn.transaction():
            conn.execute(sql, params).fetchall()

    def layer_temporal(i: int) -> None:
        with store.read() as tx:
            tx.keys_valid_at(p[i][0], p[i][1])  # type: ignore[attr-defined]

    def layer_by_index(i: int) -> None:
        with store.read() as tx:
            tx.anchors_by_index_keys(p[i][2])

    def layer_proof(i: int) -> None:
        with store.read() as tx:
            tx.get_proof(p[i][3])

    return {
        "temporal lookup: psycopg": lambda i: bare(temporal, {"a": p[i][0], "t": p[i][1]}),
        "temporal lookup: core (keys_valid_at)": layer_temporal,
        "anchor by index key: psycopg": lambda i: bare(pgsql._ANCHORS_BY_INDEX, (p[i][2],)),
        "anchor by index key: core": layer_by_index,
        "get_proof: psycopg": lambda i: bare(proof, (p[i][3],)),
        "get_proof: core": layer_proof,
    }


def report(title: str, results: dict[str, tuple[float, float]]) -> None:
    print(f"-- {title}")
    print(f"{'operation':<50} {'p50 us':>8} {'p99 us':>8}")
    for name, (p50, p99) in results.items():
        print(f"{name:<50} {p50:>8.0f} {p99:>8.0f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=1000, help="calls per operation per round")
    parser.add_argument("--postgres", action="store_true", help="also measure PostgreSQL")
    args = parser.parse_args(argv)
    print(
        "== bench_sql_core:",
        platform.machine(),
        os.cpu_count(),
        "cpus, load average",
        " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "| SQLAlchemy:",
        "not installed, not measured" if sqlalchemy is None else sqlalchemy.__version__,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ops = sqlite_ops(Path(tmp) / "bench.db", args.anchors, args.calls)
        report(f"SQLite, {args.anchors:,} anchors", run_rounds(ops, args.calls))
    if args.postgres:
        from pg_server import PostgresServer

        server = PostgresServer(durable=True)
        try:
            url = server.create_database("bench_sql_core")
            ops = postgres_ops(url, args.anchors, args.calls)
            report(f"PostgreSQL, {args.anchors:,} anchors", run_rounds(ops, args.calls))
        finally:
            server.stop()


if __name__ == "__main__":
    main()

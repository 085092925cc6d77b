"""Generate a SQLite home of a given size for the benchmarks (issue 20, item 4).

A home holds ``anchors`` trust anchors (``pkg:npm/scope<a>/*``, predicate type
``evidence.stella/v1``), each with ``rotations + 1`` Ed25519 keys in its history (every key
but the newest revoked, ``superseded``, when the next was added), and ``proofs`` signed DSSE
in-toto envelopes: proof ``i`` is about ``pkg:npm/scope<i % anchors>/p<i>@1.0.0`` and signed
by its anchor's current key. The audit log holds the events that produced exactly this state
(KEY_IMPORTED, ANCHOR_CREATED, KEY_ADDED, KEY_REVOKED, one PROOF_SIGNED per proof, then
PROOF_SIGNED filler up to ``events``), chained with ``stellakeys.audit.chain_event`` as the
store does, so ``stellaops audit verify`` (chain and state replay) reports OK.

Fast: keys and anchors go through the store's API; proofs and audit events, which are nearly
all of a home, are written with ``executemany`` in one transaction each (1M proofs take a few
minutes, most of it Ed25519 signing).

Use from a benchmark::

    from make_home import build_home
    info = build_home(Path(tmp) / "home", proofs=100_000, anchors=10, rotations=0)
    # STELLAKEYS_HOME=info.home, or SqliteStore(info.db); info.anchor_ids, info.digests[:k]

or from the shell: ``python benchmarks/make_home.py DIR --proofs 10000 [--anchors 10]
[--rotations 0] [--events N]``. Times are fixed (from 2024-01-01), so the CLI's
``STELLAKEYS_TEST_NOW`` (or any later clock) sees every current key valid.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor  # noqa: E402
from stellakeys.audit import AuditEvent, AuditRecord, EventType, chain_event  # noqa: E402
from stellakeys.crypto._base import fingerprint_of_spki  # noqa: E402
from stellakeys.dsse import Envelope, Signature, pae  # noqa: E402
from stellakeys.keys import KeyOrigin, KeyRecord  # noqa: E402
from stellakeys.purl_pattern import PurlPattern, lookup_keys_for  # noqa: E402
from stellakeys.storage import _codec as codec  # noqa: E402
from stellakeys.storage.sqlite import SqliteStore  # noqa: E402
from stellakeys.times import format_time  # noqa: E402

__all__ = ["T0", "Home", "build_home"]

#: The first instant of a home; rotation r of every anchor is at T0 + r days, proofs follow.
T0 = datetime(2024, 1, 1, tzinfo=UTC)
PREDICATE = "evidence.stella/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
ACTOR = "make_home"


@attrs.frozen
class Home:
    home: Path
    db: Path
    anchor_ids: tuple[uuid.UUID, ...]
    #: proof digests in signing order (proof i belongs to anchor_ids[i % len(anchor_ids)])
    digests: tuple[str, ...]
    events: int
    #: the instant after every write: a "now" at which the current keys are valid
    now: datetime


def _statement(purl: str, i: int) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": purl, "digest": {"sha256": f"{i:064x}"}}],
            "predicateType": PREDICATE,
            "predicate": {"n": i},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def build_home(
    path: Path,
    proofs: int,
    anchors: int = 10,
    rotations: int = 0,
    events: int | None = None,
) -> Home:
    """Create the home directory ``path`` (must not hold a database yet) and fill it."""
    path.mkdir(parents=True, exist_ok=True)
    db = path / "stellakeys.db"
    if db.exists():
        raise FileExistsError(f"{db} exists: build_home makes a new home")
    store = SqliteStore(db)
    head: AuditEvent | None = None
    audit_rows: list[tuple[object, ...]] = []

    def log(kind: str, at: datetime, **fields: object) -> None:
        nonlocal head
        record = AuditRecord(event_type=kind, actor=ACTOR, timestamp=at, **fields)  # type: ignore[arg-type]
        head = chain_event(head, record)
        audit_rows.append(codec.audit_to_row(head))

    anchor_ids: list[uuid.UUID] = []
    signers: list[tuple[str, ed25519.Ed25519PrivateKey]] = []
    with store.transaction() as tx:
        for a in range(anchors):
            aid = uuid.UUID(int=a + 1)
            anchor_ids.append(aid)
            pattern = f"pkg:npm/scope{a}/*"
            history: list[KeyHistoryEntry] = []
            key = None
            for r in range(rotations + 1):
                key = ed25519.Ed25519PrivateKey.generate()
                spki = key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                pem = key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                kid, fp, added = f"a{a}-k{r}", fingerprint_of_spki(spki), T0 + timedelta(days=r)
                tx.insert_key(
                    KeyRecord(
                        kid, "ed25519", pem.decode(), fp, added, None, None, KeyOrigin.IMPORTED
                    )
                )
                log(
                    EventType.KEY_IMPORTED,
                    added,
                    key_id=kid,
                    details={"algorithm": "ed25519", "fingerprint": fp},
                )
                history.append(KeyHistoryEntry(aid, kid, "ed25519", pem.decode(), fp, added))
            for r in range(rotations):  # each key retired when the next one came
                history[r] = attrs.evolve(
                    history[r], revoked_at=history[r + 1].added_at, revoke_reason="superseded"
                )
            assert key is not None
            signers.append((history[-1].key_id, key))
            tx.insert_anchor(
                TrustAnchor(aid, pattern, (PREDICATE,), "v1", T0, tuple(history)),
                PurlPattern.parse(pattern).index_key,
            )
            log(
                EventType.ANCHOR_CREATED,
                T0,
                anchor_id=aid,
                details={
                    "purlPattern": pattern,
                    "keyIds": [],
                    "predicateTypes": [PREDICATE],
                    "policyVersion": "v1",
                },
            )
            for e in history:
                log(
                    EventType.KEY_ADDED,
                    e.added_at,
                    key_id=e.key_id,
                    anchor_id=aid,
                    details={"addedAt": format_time(e.added_at)},
                )
                if e.revoked_at is not None:
                    log(
                        EventType.KEY_REVOKED,
                        e.revoked_at,
                        key_id=e.key_id,
                        anchor_id=aid,
                        details={"reason": "superseded", "effectiveAt": format_time(e.revoked_at)},
                    )
    start = T0 + timedelta(days=rotations + 1)
    digests: list[str] = []
    keys: list[tuple[str, str]] = []  # the subject index (stellakeys.proof_index)

    def proof_rows() -> Iterator[tuple[object, ...]]:
        for i in range(proofs):
            kid, key = signers[i % anchors]
            purl = f"pkg:npm/scope{i % anchors}/p{i}@1.0.0"
            payload = _statement(purl, i)
            sig = key.sign(pae(PAYLOAD_TYPE, payload))
            envelope = Envelope(PAYLOAD_TYPE, payload, (Signature(sig, kid),))
            body, digest = envelope.to_json(), envelope.digest()
            at = start + timedelta(seconds=i)
            digests.append(digest)
            log(
                EventType.PROOF_SIGNED,
                at,
                key_id=kid,
                details={"proof": digest, "payloadType": PAYLOAD_TYPE},
            )
            keys.extend((k, digest) for k in lookup_keys_for(purl) if k)
            yield (digest, body, codec.to_micros(at))

    store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a benchmark fixture, rebuilt on loss
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO proofs (digest, envelope_json, created_at) VALUES (?, ?, ?)",
            proof_rows(),
        )
        # As put_proof files each proof: its lookup keys, and off the trigger's queue.
        conn.executemany(
            "INSERT INTO proof_subject_keys (index_key, digest) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            keys,
        )
        conn.execute("DELETE FROM proofs_unindexed")
        last = start + timedelta(seconds=proofs)
        target = len(audit_rows) if events is None else events
        for n in range(len(audit_rows), target):
            log(
                EventType.PROOF_SIGNED,
                last + timedelta(microseconds=n),
                key_id=signers[n % anchors][0],
                details={"proof": f"sha256:{n:064x}", "payloadType": PAYLOAD_TYPE},
            )
        conn.executemany(
            f"INSERT INTO key_audit_log ({codec.AUDIT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            audit_rows,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    now = max(last, T0 + timedelta(days=rotations)) + timedelta(days=1)
    return Home(path, db, tuple(anchor_ids), tuple(digests), len(audit_rows), now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--proofs", type=int, default=1000)
    parser.add_argument("--anchors", type=int, default=10)
    parser.add_argument("--rotations", type=int, default=0)
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = build_home(args.home, args.proofs, args.anchors, args.rotations, args.events)
    print(
        f"{info.db}: {len(info.digests):,} proofs, {len(info.anchor_ids)} anchors,"
        f" {info.events:,} audit events in {time.perf_counter() - started:.1f} s;"
        f" now={format_time(info.now)} first anchor {info.anchor_ids[0]}"
    )


if __name__ == "__main__":
    main()

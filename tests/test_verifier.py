"""The standalone Verifier (stellakeys.verifier): anchors and keys from plain objects, no
store; the feed consumer verifying without a store; typed reasons; presentation at the edge."""

from __future__ import annotations

import ast
import pickle
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from stellakeys import COMPROMISE, FrozenClock, KeyManager, Statement, Subject
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.batch import BatchItem, category_of, verify_many
from stellakeys.crypto import PrivateKey, get_algorithm
from stellakeys.dsse import Envelope, sign_envelope
from stellakeys.feed import FeedConfig, FeedError, publish_feed, verifier_from_feed
from stellakeys.intoto import PAYLOAD_TYPE
from stellakeys.purl import PurlPattern, most_specific_matches
from stellakeys.reasons import Reason, ReasonCode
from stellakeys.storage.memory import MemoryStore
from stellakeys.verification import VerificationPolicy
from stellakeys.verifier import StaticSource, Verifier

EVIDENCE = "evidence.stella/v1"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SIGNED = T0 + timedelta(days=10)
NOW = T0 + timedelta(days=100)
POLICY = VerificationPolicy()


def _key() -> PrivateKey:
    return get_algorithm("ed25519").generate()


def _entry(anchor_id: uuid.UUID, key_id: str, key: PrivateKey, **kw: object) -> KeyHistoryEntry:
    return KeyHistoryEntry(
        anchor_id=anchor_id,
        key_id=key_id,
        algorithm="ed25519",
        public_key_pem=key.public_key().to_pem(),
        fingerprint=key.fingerprint,
        added_at=kw.pop("added_at", T0),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _anchor(
    pattern: str, *entries_of: tuple[str, PrivateKey], n: int = 1, **kw: object
) -> TrustAnchor:
    anchor_id = uuid.UUID(int=n)
    history = tuple(_entry(anchor_id, k, key, **kw) for k, key in entries_of)
    return TrustAnchor(anchor_id, pattern, (EVIDENCE,), "v1", T0, history)


def _proof(key: PrivateKey, key_id: str, *purls: str, predicate: str = EVIDENCE) -> Envelope:
    subjects = tuple(Subject(p, {"sha256": "ab" * 32}) for p in purls)
    payload = Statement(subjects, predicate, {}).to_json()
    return sign_envelope(PAYLOAD_TYPE, payload, [key], [key_id])


def codes(result: object) -> list[ReasonCode]:
    return [r.code for r in result.reasons]  # type: ignore[attr-defined]


# --- the Verifier alone -----------------------------------------------------------------------


def test_verifier_from_plain_objects_verifies_and_explains_with_codes() -> None:
    key = _key()
    verifier = Verifier.from_objects([_anchor("pkg:npm/*", ("k1", key))])
    proof = _proof(key, "k1", "pkg:npm/left-pad@1.3.0")
    ok = verifier.verify(proof, now=NOW, policy=POLICY)
    assert ok.ok and ok.key_id == "k1" and ok.anchor_pattern == "pkg:npm/*"
    assert ok.time == NOW and ok.to_dict()["reasonCodes"] == []
    early = verifier.verify(proof, at=T0 - timedelta(days=1), now=NOW, policy=POLICY)
    assert not early.ok
    assert codes(early)[0] is ReasonCode.KEY_NOT_YET_VALID
    # The message is unchanged: the reason *is* its message.
    assert str(early.reasons[0]).startswith("key k1 was added at") and "after T" in early.reasons[0]
    body = early.to_dict()
    assert body["reasons"] == [str(r) for r in early.reasons]
    assert body["reasonCodes"] == [c.value for c in codes(early)]
    assert verifier.verifications == 2
    assert verifier.failures_by_code()[ReasonCode.KEY_NOT_YET_VALID] == 1


def test_a_key_from_another_source_does_not_count() -> None:
    # A hostile signer with their own key and the anchor's key id.
    trusted, forged = _key(), _key()
    verifier = Verifier.from_objects([_anchor("pkg:npm/*", ("k1", trusted))])
    result = verifier.verify(_proof(forged, "k1", "pkg:npm/a@1"), now=NOW, policy=POLICY)
    assert not result.ok and codes(result) == [ReasonCode.NO_VALID_SIGNATURE]


def test_compromise_in_one_anchor_applies_in_every_anchor_without_a_store() -> None:
    key = _key()
    npm = _anchor("pkg:npm/*", ("k1", key), n=1)
    maven = _anchor(
        "pkg:maven/*",
        ("k1", key),
        n=2,
        revoked_at=SIGNED + timedelta(days=5),
        revoke_reason=COMPROMISE,
    )
    verifier = Verifier.from_objects([npm, maven])
    proof = _proof(key, "k1", "pkg:npm/a@1")
    # The npm anchor never recorded the compromise: it still must not vouch for the key.
    asserted = verifier.verify(proof, at=SIGNED, now=NOW, policy=POLICY)
    assert not asserted.ok
    assert codes(asserted) == [
        ReasonCode.COMPROMISED_WITHOUT_TRUSTED_TIME,
        ReasonCode.NO_VALID_SIGNATURE,
    ]
    current = verifier.verify(proof, now=NOW, policy=POLICY)
    assert codes(current)[0] is ReasonCode.KEY_COMPROMISED


def test_every_subject_is_judged_and_prefixed_reasons_keep_their_code() -> None:
    key = _key()
    verifier = Verifier.from_objects([_anchor("pkg:npm/*", ("k1", key))])
    # A hostile signer smuggles a subject that no anchor covers next to a covered one.
    proof = _proof(key, "k1", "pkg:npm/a@1", "pkg:maven/evil/x@1")
    result = verifier.verify(proof, now=NOW, policy=POLICY)
    assert not result.ok
    assert [s.ok for s in result.subjects] == [True, False]
    (reason,) = [r for r in result.reasons if r.code is ReasonCode.NO_TRUST_ANCHOR]
    assert reason.startswith("subject pkg:maven/evil/x@1: no active trust anchor matches")
    # The requested artifact must be a subject.
    other = verifier.verify(proof, purl="pkg:npm/b@1", now=NOW, policy=POLICY)
    assert ReasonCode.NOT_A_SUBJECT in codes(other) and not other.ok


def test_two_anchors_with_one_pattern_are_ambiguous_never_chosen() -> None:
    # A hostile store writer adds a second active anchor with the same pattern and its key.
    key, theirs = _key(), _key()
    honest = _anchor("pkg:npm/*", ("k1", key), n=1)
    planted = _anchor("pkg:npm/*", ("k9", theirs), n=2)
    verifier = Verifier.from_objects([honest, planted])
    for signer, key_id in ((key, "k1"), (theirs, "k9")):
        result = verifier.verify(_proof(signer, key_id, "pkg:npm/a@1"), now=NOW, policy=POLICY)
        assert not result.ok
        assert ReasonCode.AMBIGUOUS_ANCHORS in codes(result)
        assert any("apply equally" in r for r in result.reasons)


def test_most_specific_anchor_applies_from_purl_rules() -> None:
    broad, narrow = _key(), _key()
    verifier = Verifier.from_objects(
        [
            _anchor("pkg:npm/*", ("broad", broad), n=1),
            _anchor("pkg:npm/left-pad", ("narrow", narrow), n=2),
        ]
    )
    # The broad anchor's key cannot sign for the package a narrower anchor owns.
    result = verifier.verify(_proof(broad, "broad", "pkg:npm/left-pad@1"), now=NOW, policy=POLICY)
    assert not result.ok and result.anchor_pattern == "pkg:npm/left-pad"
    assert verifier.verify(
        _proof(narrow, "narrow", "pkg:npm/left-pad@1"), now=NOW, policy=POLICY
    ).ok
    # The rule itself, in purl.py: every tied entry of the top specificity comes back.
    entries = [(PurlPattern.parse("pkg:npm/*"), 1), (PurlPattern.parse("pkg:npm/*"), 2)]
    assert [v for _, v in most_specific_matches("pkg:npm/a", entries)] == [1, 2]
    assert most_specific_matches(None, entries) == []
    star = [(PurlPattern.parse("*"), 3), *entries]
    assert [v for _, v in most_specific_matches(None, star)] == [3]


def test_malformed_statement_and_key_only_checks_without_a_store() -> None:
    key = _key()
    verifier = Verifier.from_objects([_anchor("pkg:npm/*", ("k1", key))])
    broken = sign_envelope(PAYLOAD_TYPE, b'{"_type": "nonsense"}', [key], ["k1"])
    result = verifier.verify(broken, now=NOW, policy=VerificationPolicy(require_anchor=False))
    assert not result.ok and codes(result) == [ReasonCode.MALFORMED_STATEMENT]
    text = sign_envelope("text/plain", b"hello", [key], ["k1"])
    assert codes(verifier.verify(text, now=NOW, policy=POLICY)) == [ReasonCode.NO_ARTIFACT]
    key_only = verifier.verify(text, now=NOW, policy=VerificationPolicy(require_anchor=False))
    assert key_only.ok and key_only.key_only and key_only.key_id == "k1"


def test_verifier_agrees_with_the_store_backed_manager() -> None:
    key = _key()
    anchors = [
        _anchor(
            "pkg:npm/*",
            ("k1", key),
            n=1,
            revoked_at=SIGNED + timedelta(days=1),
            revoke_reason="annual-rotation",
        ),
    ]
    store = MemoryStore()
    source = StaticSource(anchors)
    with store.transaction() as tx:
        for record in source.key_only_view(())[0]:
            tx.insert_key(record)
        for a in anchors:
            tx.insert_anchor(a, PurlPattern.parse(a.purl_pattern).index_key)
    km = KeyManager(store, clock=FrozenClock(NOW))
    alone = Verifier(source, source)
    proof = _proof(key, "k1", "pkg:npm/a@1", "pkg:npm/b@2")
    for at in (None, SIGNED, T0 - timedelta(days=1)):
        mine = alone.verify(proof, at=at, now=NOW, policy=POLICY).to_dict()
        theirs = km.verify(proof, at=at).to_dict()
        assert mine == theirs
    # The manager verifies through its own Verifier, and counts there.
    assert km.verifier.verifications == 3


def test_reasons_survive_pickling_with_their_codes() -> None:
    reason = Reason(ReasonCode.KEY_REVOKED, "key k was revoked")
    back = pickle.loads(pickle.dumps(reason))
    assert back == "key k was revoked" and back.code is ReasonCode.KEY_REVOKED
    assert repr(back) == "Reason('key-revoked', 'key k was revoked')"
    assert str(back.prefixed("subject x: ")) == "subject x: key k was revoked"
    assert back.prefixed("p").code is ReasonCode.KEY_REVOKED


def test_batch_with_a_bare_verifier_and_an_explicit_now() -> None:
    key = _key()
    verifier = Verifier.from_objects([_anchor("pkg:npm/*", ("k1", key), added_at=SIGNED)])
    good = _proof(key, "k1", "pkg:npm/a@1").to_json()
    items = [BatchItem(good, label="good"), BatchItem("sha256:" + "0" * 64, label="address")]
    late = verify_many(items, manager=verifier, now=NOW)
    assert late[0].ok and late[0].result is not None and late[0].result.time == NOW
    assert late[1].error is not None and "no proof" in late[1].error
    early = verify_many(items[:1], manager=verifier, now=T0)
    assert early[0].category == category_of(ReasonCode.KEY_NOT_YET_VALID) == "key not yet valid"


# --- the feed consumer without a store -------------------------------------------------------


def test_feed_consumer_verifies_without_a_store(
    stellakeys_manager: KeyManager, stellakeys_clock: FrozenClock
) -> None:
    km = stellakeys_manager
    for key_id in ("f1", "f2", "k1"):
        km.generate_key(key_id)
    anchor = km.create_anchor("pkg:npm/*", ["k1"], [EVIDENCE], "v1")
    stellakeys_clock.advance(timedelta(days=1))
    statement = Statement((Subject("pkg:npm/a@1", {"sha256": "ab" * 32}),), EVIDENCE, {})
    proof = km.get_proof(km.sign(statement.to_json(), ["k1"]))
    signed_at = stellakeys_clock.now()
    stellakeys_clock.advance(timedelta(days=1))
    km.revoke_key(anchor.anchor_id, "k1", COMPROMISE)
    feed = publish_feed(km, FeedConfig(("f1", "f2"), threshold=2), include_keys=True).feed

    verifier = verifier_from_feed(feed.document)
    assert isinstance(verifier.anchors, StaticSource)  # the document, not a store
    now = stellakeys_clock.now()
    # Compromised: asserted time before the revocation is not enough, offline as online.
    offline = verifier.verify(proof, at=signed_at, now=now, policy=POLICY)
    online = km.verify(proof, at=signed_at)
    assert not offline.ok and offline.to_dict() == online.to_dict()
    assert codes(offline)[0] is ReasonCode.COMPROMISED_WITHOUT_TRUSTED_TIME
    with pytest.raises(FeedError, match="without --include-keys"):
        verifier_from_feed(publish_feed(km, FeedConfig(("f1", "f2"), threshold=2)).document)


# --- presentation at the edge ----------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize(
    "module", ["anchors.py", "verification.py", "verifier.py", "binding.py", "reasons.py"]
)
def test_the_core_does_not_import_presentation(module: str) -> None:
    root = Path(__file__).resolve().parent.parent / "stellakeys"
    found = _imports(root / module)
    assert not found & {"stellakeys.notebook", "stellakeys.forensics", "stellakeys.manager"}


def test_anchor_html_reads_no_clock() -> None:
    from stellakeys.notebook import anchor_html

    key = _key()
    anchor = _anchor("pkg:npm/*", ("k1", key), revoked_at=SIGNED, revoke_reason="superseded")
    # Without a time, no "at <time>" split: the caller decides the time, none is read here.
    assert "Allowed keys at" not in anchor_html(anchor)
    at_signing = anchor_html(anchor, at=T0 + timedelta(days=1))
    assert "Allowed keys at 2024-01-02T00:00:00Z" in at_signing
    assert anchor._repr_html_() == anchor_html(anchor)  # registered by the notebook module


@pytest.mark.parametrize("index_keys_kept", [True, False], ids=["keys-in-memory", "per-key"])
def test_caches_follow_another_process_writes_to_the_anchors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_keys_kept: bool
) -> None:
    """The store-backed source keeps anchors per index key, the active index keys and key-wide
    compromises between verifications; a write by another process (another store object on
    the same SQLite file) must reach the next verification: a new, more specific anchor that
    does not trust the signer, then a compromise recorded in an anchor the proof never used.
    Both ways of finding candidates: the active index keys in memory, and (past the limit)
    one query per unknown key."""
    from stellakeys.storage.sqlite import SqliteStore
    from stellakeys.store_source import StoreSource

    if not index_keys_kept:
        monkeypatch.setattr(StoreSource, "_INDEX_KEYS_LIMIT", 0)

    key, other = _key(), _key()
    broad = _anchor("pkg:npm/*", ("release", key), n=1)
    writer = SqliteStore.open_home(tmp_path)
    with writer.transaction() as tx:
        tx.insert_anchor(broad, PurlPattern.parse(broad.purl_pattern).index_key)
    reader = KeyManager(SqliteStore.open_home(tmp_path))
    first = _proof(key, "release", "pkg:npm/app@1.0.0")
    second = _proof(key, "release", "pkg:npm/lib@2.0.0")
    assert reader.verify(first, at=SIGNED, now=NOW).ok
    assert reader.verify(second, at=SIGNED, now=NOW).ok  # a new PURL: no query for its keys
    narrow = _anchor("pkg:npm/app@1.0.0", ("other", other), n=2)
    with writer.transaction() as tx:
        tx.insert_anchor(narrow, PurlPattern.parse(narrow.purl_pattern).index_key)
    refused = reader.verify(first, at=SIGNED, now=NOW)
    assert not refused.ok and refused.anchor_id == narrow.anchor_id
    assert reader.verify(second, at=SIGNED, now=NOW).ok
    # The same key, compromised (before the signature) in a third, inactive anchor: key-wide,
    # so the broad anchor's proof is refused too.
    stolen = _anchor("pkg:pypi/*", ("release", key), n=3, revoked_at=T0, revoke_reason=COMPROMISE)
    with writer.transaction() as tx:
        tx.insert_anchor(attrs.evolve(stolen, active=False), "pypi")
    after = reader.verify(second, at=SIGNED, now=NOW)
    assert not after.ok
    assert ReasonCode.KEY_COMPROMISED in {r.code for r in after.reasons}
    reader.close()
    writer.close()

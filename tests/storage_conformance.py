"""The storage conformance suite: what every :class:`stellakeys.storage.ports.Store` must do.

Use it from an adapter's test module by subclassing and providing a ``store`` fixture that
yields a fresh, empty store::

    from storage_conformance import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path): ...

Nothing here knows which adapter it runs against; adapter specifics (files, processes,
migrations, crash recovery) belong in the adapter's own module.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stellakeys.anchors import COMPROMISE, KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent, AuditQuery, AuditRecord, verify_chain
from stellakeys.errors import ConflictError, NotFoundError, ProofIntegrityError, StorageError
from stellakeys.keys import KeyOrigin, KeyRecord
from stellakeys.revocation import RevocationReason
from stellakeys.storage.ports import (
    AuditStateRows,
    FeedVersionRecord,
    ProofRecord,
    Store,
    Transaction,
)

__all__ = ["StoreConformance", "anchor", "audit_record", "entry", "key"]

T0 = datetime(2024, 1, 15, tzinfo=UTC)
PEM = (
    ed25519.Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def at(days: float = 0, micros: int = 0) -> datetime:
    return T0 + timedelta(days=days, microseconds=micros)


def key(key_id: str, *, created: datetime | None = None, **overrides: Any) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        algorithm=overrides.pop("algorithm", "ed25519"),
        public_key_pem=overrides.pop("public_key_pem", PEM),
        fingerprint=overrides.pop("fingerprint", "SHA256:" + "ab" * 32),
        created_at=created or T0,
        **overrides,
    )


def entry(
    anchor_id: uuid.UUID, key_id: str, added: datetime | None = None, **overrides: Any
) -> KeyHistoryEntry:
    return KeyHistoryEntry(
        anchor_id=anchor_id,
        key_id=key_id,
        algorithm=overrides.pop("algorithm", "ed25519"),
        public_key_pem=overrides.pop("public_key_pem", PEM),
        fingerprint=overrides.pop("fingerprint", "SHA256:" + "cd" * 32),
        added_at=added or T0,
        **overrides,
    )


def anchor(
    pattern: str = "pkg:npm/*",
    *,
    keys: tuple[str, ...] = (),
    created: datetime | None = None,
    anchor_id: uuid.UUID | None = None,
    **overrides: Any,
) -> TrustAnchor:
    aid = anchor_id or uuid.uuid4()
    history = tuple(entry(aid, k, at(i)) for i, k in enumerate(keys))
    return TrustAnchor(
        anchor_id=aid,
        purl_pattern=pattern,
        allowed_predicate_types=overrides.pop("allowed_predicate_types", ("evidence.stella/v1",)),
        policy_version=overrides.pop("policy_version", "v1"),
        created_at=created or T0,
        key_history=overrides.pop("key_history", history),
        **overrides,
    )


def audit_record(event_type: str = "KEY_GENERATED", **fields: Any) -> AuditRecord:
    fields.setdefault("actor", "alice")
    fields.setdefault("timestamp", T0)
    return AuditRecord(event_type=event_type, **fields)


def body_of(label: str) -> bytes:
    return b'{"label":"' + label.encode() + b'"}'


def addr(label: str) -> str:
    """The content address of the proof labelled ``label`` (stores check it)."""
    return "sha256:" + hashlib.sha256(body_of(label)).hexdigest()


def proof(label: str, created: datetime | None = None) -> ProofRecord:
    return ProofRecord(digest=addr(label), envelope_json=body_of(label), created_at=created or T0)


def snapshot(store: Store) -> dict[str, Any]:
    """Everything observable through the port, for before/after comparisons."""
    with store.read() as tx:
        anchors = tx.list_anchors()
        return {
            "keys": tx.list_keys(),
            "anchors": anchors,
            "history": {k: tx.history_of_key(k) for k in ("k1", "k2", "k3", "new")},
            "proofs": list(tx.iter_proofs()),
            "audit": list(tx.iter_audit()),
        }


CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # PostgreSQL refuses NUL in text
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(CHARS),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(CHARS, max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
TEXT = st.text(CHARS, min_size=1, max_size=40)


class StoreConformance:
    """Every test gets a fresh, empty ``store`` from the subclass's fixture."""

    # --- keys -----------------------------------------------------------------------------

    def test_key_round_trip_every_field(self, store: Store) -> None:
        full = key(
            "key-2025-prod",
            created=at(0.5, micros=123_457),
            profile="fips",
            key_store_uri="hsm://pkcs11/slot/0#object=key-2025-prod;version=3",
            origin=KeyOrigin.IMPORTED,
            metadata={"owner": "Ωmega team ✓", "nested": {"list": [1, "二", None, True]}},
        )
        minimal = key("k-minimal", created=at(1))
        with store.transaction() as tx:
            tx.insert_key(full)
            tx.insert_key(minimal)
        with store.read() as tx:
            assert tx.get_key("key-2025-prod") == full
            got = tx.get_key("k-minimal")
            assert got == minimal
            assert got is not None
            assert got.profile is None and got.key_store_uri is None and got.metadata == {}
            assert tx.get_key("missing") is None

    @settings(
        max_examples=40,
        deadline=None,
        # The suite is one class subclassed per adapter, so the same test method runs on
        # several "executors" (the subclasses); each gets its own fresh store, which is safe.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(key_id=TEXT, profile=st.none() | TEXT, metadata=st.dictionaries(TEXT, JSON))
    def test_key_round_trip_arbitrary_text(
        self, store: Store, key_id: str, profile: str | None, metadata: dict[str, Any]
    ) -> None:
        record = key(f"{uuid.uuid4()}/{key_id}", profile=profile, metadata=metadata)
        with store.transaction() as tx:
            tx.insert_key(record)
        with store.read() as tx:
            assert tx.get_key(record.key_id) == record

    def test_duplicate_key_id_conflicts(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.insert_key(key("k1"))
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_key(key("k1", algorithm="ecdsa-p256-sha256"))
        with store.read() as tx:
            got = tx.get_key("k1")
            assert got is not None and got.algorithm == "ed25519"

    def test_list_keys_ordered_by_created_at_then_id(self, store: Store) -> None:
        records = [
            key("b", created=at(1)),
            key("a", created=at(1)),
            key("c", created=at(0)),
            key("z", created=at(0, micros=1)),
        ]
        with store.transaction() as tx:
            for r in records:
                tx.insert_key(r)
        with store.read() as tx:
            assert [k.key_id for k in tx.list_keys()] == ["c", "z", "a", "b"]

    def test_times_are_exact_aware_utc(self, store: Store) -> None:
        plus2 = timezone(timedelta(hours=2))
        times = {
            "micro": datetime(2024, 6, 15, 12, 0, 0, 999_999, tzinfo=UTC),
            "offset": datetime(2024, 6, 15, 14, 0, 0, 1, tzinfo=plus2),
            "pre-epoch": datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC),
            "far": datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        }
        with store.transaction() as tx:
            for name, t in times.items():
                tx.insert_key(key(name, created=t))
        with store.read() as tx:
            for name, t in times.items():
                got = tx.get_key(name)
                assert got is not None
                assert got.created_at == t
                assert got.created_at.utcoffset() == timedelta(0)

    def test_naive_time_refused(self, store: Store) -> None:
        with pytest.raises(ValueError), store.transaction() as tx:
            tx.insert_key(key("naive", created=datetime(2024, 1, 1)))
        with store.read() as tx:
            assert tx.get_key("naive") is None

    def test_stored_metadata_is_isolated_from_callers(self, store: Store) -> None:
        meta: dict[str, Any] = {"a": [1]}
        with store.transaction() as tx:
            tx.insert_key(key("k1", metadata=meta))
        meta["a"].append(2)
        meta["b"] = 1
        with store.read() as tx:
            got = tx.get_key("k1")
            assert got is not None and got.metadata == {"a": [1]}
            got.metadata["a"].append(3)
        with store.read() as tx:
            again = tx.get_key("k1")
            assert again is not None and again.metadata == {"a": [1]}

    # --- anchors and history --------------------------------------------------------------

    def test_anchor_round_trip_every_field(self, store: Store) -> None:
        aid = uuid.uuid4()
        history = (
            entry(aid, "key-2024-prod", at(0), revoked_at=at(366), revoke_reason="annual-rotation"),
            entry(
                aid,
                "key-2025-prod",
                at(152, micros=7),
                expires_at=at(600),
                metadata={"ticket": "SEC-1", "ü": ["ß"]},
                algorithm="ml-dsa-65",
                fingerprint="SHA256:" + "ef" * 32,
            ),
            entry(aid, "key-x", at(152, micros=7), revoked_at=at(1), revoke_reason=COMPROMISE),
        )
        original = TrustAnchor(
            anchor_id=aid,
            purl_pattern="pkg:maven/org.apache.*",
            allowed_predicate_types=("reasoning.stella/v1", "evidence.stella/v1"),
            policy_version="v2.3.1",
            created_at=at(0, micros=1),
            key_history=history,
            active=True,
        )
        with store.transaction() as tx:
            tx.insert_anchor(original, "maven")
        with store.read() as tx:
            got = tx.get_anchor(aid)
        assert got == original
        assert got is not None
        # Ordered by added_at, then key_id; predicate types keep their order.
        assert [e.key_id for e in got.key_history] == ["key-2024-prod", "key-2025-prod", "key-x"]
        assert got.allowed_predicate_types == ("reasoning.stella/v1", "evidence.stella/v1")

    def test_anchor_history_is_returned_ordered(self, store: Store) -> None:
        aid = uuid.uuid4()
        unordered = (entry(aid, "c", at(2)), entry(aid, "b", at(1)), entry(aid, "a", at(2)))
        with store.transaction() as tx:
            tx.insert_anchor(anchor(anchor_id=aid, key_history=unordered), "npm")
            tx.insert_history(entry(aid, "0", at(3)))
            tx.insert_history(entry(aid, "early", at(-1)))
        with store.read() as tx:
            got = tx.get_anchor(aid)
        assert got is not None
        assert [e.key_id for e in got.key_history] == ["early", "b", "a", "c", "0"]

    def test_anchor_without_predicates_or_history(self, store: Store) -> None:
        original = anchor("*", allowed_predicate_types=(), active=False)
        with store.transaction() as tx:
            tx.insert_anchor(original, "")
        with store.read() as tx:
            assert tx.get_anchor(original.anchor_id) == original
            assert tx.get_anchor(uuid.uuid4()) is None

    def test_duplicate_anchor_id_conflicts(self, store: Store) -> None:
        first = anchor(keys=("k1",))
        with store.transaction() as tx:
            tx.insert_anchor(first, "npm")
        clash = anchor("pkg:pypi/*", anchor_id=first.anchor_id, keys=("k2",))
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_anchor(clash, "pypi")
        with store.read() as tx:
            assert tx.get_anchor(first.anchor_id) == first
            assert tx.history_of_key("k2") == []

    def test_history_entry_of_another_anchor_is_refused(self, store: Store) -> None:
        a = anchor(key_history=(entry(uuid.uuid4(), "k1"),))
        with pytest.raises(ValueError), store.transaction() as tx:
            tx.insert_anchor(a, "npm")

    def test_key_joins_an_anchor_once(self, store: Store) -> None:
        a, b = anchor(keys=("k1",)), anchor("pkg:pypi/*")
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
            tx.insert_anchor(b, "pypi")
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_history(entry(a.anchor_id, "k1", at(5)))
        with store.transaction() as tx:
            tx.insert_history(entry(b.anchor_id, "k1", at(5)))  # another anchor: fine
        aid = uuid.uuid4()
        twice = anchor("pkg:gem/*", anchor_id=aid, key_history=(entry(aid, "x"), entry(aid, "x")))
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_anchor(twice, "gem")
        with store.read() as tx:
            assert [e.anchor_id for e in tx.history_of_key("k1")] == [a.anchor_id, b.anchor_id]
            assert len(tx.list_anchors()) == 2  # the failed transaction left nothing

    def test_duplicate_history_entry_id_conflicts(self, store: Store) -> None:
        a, b = anchor(keys=("k1",)), anchor("pkg:pypi/*")
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
            tx.insert_anchor(b, "pypi")
        reused = entry(b.anchor_id, "k2", entry_id=a.key_history[0].entry_id)
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_history(reused)
        with store.read() as tx:
            assert tx.history_of_key("k2") == []

    def test_insert_history_needs_the_anchor(self, store: Store) -> None:
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.insert_history(entry(uuid.uuid4(), "k1"))

    def test_update_history_replaces_revocation_fields_only(self, store: Store) -> None:
        a = anchor(keys=("k1", "k2"))
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
        old = a.key_history[0]
        revoked = attrs.evolve(
            old,
            revoked_at=at(30, micros=5),
            revoke_reason=COMPROMISE,
            expires_at=at(40),
            metadata={"incident": "INC-7"},
            # Identity and key material never change through update_history:
            public_key_pem="not this",
            added_at=at(-100),
            entry_id=uuid.uuid4(),
        )
        with store.transaction() as tx:
            tx.update_history(revoked)
        with store.read() as tx:
            got = tx.get_anchor(a.anchor_id)
        assert got is not None
        assert got.key_history[0] == attrs.evolve(
            old,
            revoked_at=at(30, micros=5),
            revoke_reason=COMPROMISE,
            expires_at=at(40),
            metadata={"incident": "INC-7"},
        )
        assert got.key_history[1] == a.key_history[1]
        # Metadata may change; the revocation may not be undone (see the next test).
        with store.transaction() as tx:
            tx.update_history(attrs.evolve(got.key_history[0], metadata={}))
        with store.read() as tx:
            (back,) = tx.history_of_key("k1")
        assert back.metadata == {} and back.revoked_at == at(30, micros=5)

    def test_revocation_only_gets_stricter(self, store: Store) -> None:
        """What an insider with the application's store could try: un-revoke, postpone,
        downgrade compromise. Refused with ConflictError, nothing written (issue 14, #8)."""
        a = anchor(keys=("k1",))
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
        base = a.key_history[0]
        revoked = attrs.evolve(base, revoked_at=at(10), revoke_reason=COMPROMISE, expires_at=at(50))
        with store.transaction() as tx:
            tx.update_history(revoked)
        attacks = [
            attrs.evolve(revoked, revoked_at=None, revoke_reason=None),  # un-revoke
            attrs.evolve(revoked, revoked_at=None),
            attrs.evolve(revoked, revoke_reason=None),
            attrs.evolve(revoked, revoked_at=at(11)),  # postpone
            attrs.evolve(revoked, revoke_reason="superseded"),  # downgrade
            attrs.evolve(revoked, revoked_at=at(1), revoke_reason="superseded"),
            attrs.evolve(revoked, expires_at=None),
            attrs.evolve(revoked, expires_at=at(51)),
        ]
        for attack in attacks:
            with pytest.raises(ConflictError), store.transaction() as tx:
                tx.update_history(attack)
            with store.read() as tx:
                assert tx.history_of_key("k1") == [revoked]
        # Earlier is always allowed (and keeps the reason).
        earlier = attrs.evolve(revoked, revoked_at=at(9), expires_at=at(49))
        with store.transaction() as tx:
            tx.update_history(earlier)
        with store.read() as tx:
            assert tx.history_of_key("k1") == [earlier]

    @pytest.mark.parametrize("first", [r.value for r in RevocationReason])
    def test_reason_changes_only_to_a_stronger_one(self, store: Store, first: str) -> None:
        a = anchor(keys=tuple(f"k-{r.value}" for r in RevocationReason))
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
            for e in a.key_history:
                tx.update_history(attrs.evolve(e, revoked_at=at(10), revoke_reason=first))
        strength = RevocationReason(first).strength
        for e, second in zip(a.key_history, RevocationReason, strict=True):
            wanted = attrs.evolve(e, revoked_at=at(10), revoke_reason=second.value)
            if second.value == first or second.strength > strength:
                with store.transaction() as tx:
                    tx.update_history(wanted)
            else:
                with pytest.raises(ConflictError), store.transaction() as tx:
                    tx.update_history(wanted)

    def test_unknown_reason_is_not_stored(self, store: Store) -> None:
        a = anchor(keys=("k1",))
        with pytest.raises(ValueError), store.transaction() as tx:
            tx.insert_anchor(
                attrs.evolve(
                    a,
                    key_history=(
                        attrs.evolve(a.key_history[0], revoked_at=at(1), revoke_reason="oops"),
                    ),
                ),
                "npm",
            )
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
        with pytest.raises((ValueError, ConflictError)), store.transaction() as tx:
            tx.update_history(
                attrs.evolve(a.key_history[0], revoked_at=at(1), revoke_reason="Compromised")
            )

    def test_update_missing_history_not_found(self, store: Store) -> None:
        a = anchor(keys=("k1",))
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.update_history(
                entry(a.anchor_id, "k2", revoked_at=at(1), revoke_reason="superseded")
            )
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.update_history(
                entry(uuid.uuid4(), "k1", revoked_at=at(1), revoke_reason="superseded")
            )

    def test_set_anchor_active(self, store: Store) -> None:
        a = anchor(keys=("k1",))
        with store.transaction() as tx:
            tx.insert_anchor(a, "npm")
        with store.transaction() as tx:
            tx.set_anchor_active(a.anchor_id, False)
        with store.read() as tx:
            assert tx.get_anchor(a.anchor_id) == attrs.evolve(a, active=False)
        with store.transaction() as tx:
            tx.set_anchor_active(a.anchor_id, True)
        with store.read() as tx:
            assert tx.get_anchor(a.anchor_id) == a
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.set_anchor_active(uuid.uuid4(), False)

    def test_list_anchors_order_and_active_filter(self, store: Store) -> None:
        ids = sorted(uuid.uuid4() for _ in range(3))
        a1 = anchor("pkg:npm/*", anchor_id=ids[1], created=at(0), keys=("k1",))
        a0 = anchor("pkg:pypi/*", anchor_id=ids[0], created=at(0), keys=("k2", "k3"))
        late = anchor("pkg:gem/*", anchor_id=ids[2], created=at(-1), active=False, keys=("k1",))
        with store.transaction() as tx:
            for a, ik in ((a1, "npm"), (a0, "pypi"), (late, "gem")):
                tx.insert_anchor(a, ik)
        with store.read() as tx:
            assert tx.list_anchors() == [late, a0, a1]
            assert tx.list_anchors(active_only=True) == [a0, a1]

    def test_anchors_by_index_keys(self, store: Store) -> None:
        ids = sorted(uuid.uuid4() for _ in range(5))
        npm = anchor("pkg:npm/*", anchor_id=ids[3], keys=("k1", "k2"))
        npm_scoped = anchor("pkg:npm/%40acme/*", anchor_id=ids[0], created=at(1), keys=("k3",))
        universal = anchor("*", anchor_id=ids[2], created=at(-1), keys=("k1",))
        inactive = anchor("pkg:npm/left-pad", anchor_id=ids[1], active=False, keys=("k1",))
        other = anchor("pkg:pypi/*", anchor_id=ids[4], keys=("k2",))
        with store.transaction() as tx:
            tx.insert_anchor(npm, "npm")
            tx.insert_anchor(npm_scoped, "npm/@acme")
            tx.insert_anchor(universal, "")
            tx.insert_anchor(inactive, "npm")
            tx.insert_anchor(other, "pypi")
        with store.read() as tx:
            assert tx.anchors_by_index_keys([]) == []
            assert tx.anchors_by_index_keys(["maven"]) == []
            assert tx.anchors_by_index_keys(["npm"]) == [npm]
            # Ordered by created_at then id; duplicates in the input do not duplicate output.
            got = tx.anchors_by_index_keys(["npm/@acme", "", "npm", "npm", "maven"])
            assert got == [universal, npm, npm_scoped]
        with store.transaction() as tx:
            tx.set_anchor_active(npm.anchor_id, False)
            tx.set_anchor_active(inactive.anchor_id, True)
        with store.read() as tx:
            assert tx.anchors_by_index_keys(["npm"]) == [attrs.evolve(inactive, active=True)]

    def test_active_index_keys(self, store: Store) -> None:
        """The distinct keys of active anchors only, or None past the limit (then a verifier
        asks per key): an anchor deactivated, or a key only inactive anchors have, is gone."""
        with store.read() as tx:
            assert tx.active_index_keys(10) == frozenset()
        npm = anchor("pkg:npm/*", keys=("k1",))
        npm_again = anchor("pkg:npm/a", keys=("k1",))
        universal = anchor("*", keys=("k1",))
        retired = anchor("pkg:pypi/*", active=False, keys=("k1",))
        with store.transaction() as tx:
            tx.insert_anchor(npm, "npm")
            tx.insert_anchor(npm_again, "npm")  # two anchors, one key: counted once
            tx.insert_anchor(universal, "")
            tx.insert_anchor(retired, "pypi")
        with store.read() as tx:
            assert tx.active_index_keys(10) == frozenset({"npm", ""})
            assert tx.active_index_keys(2) == frozenset({"npm", ""})
            assert tx.active_index_keys(1) is None
        with store.transaction() as tx:
            tx.set_anchor_active(universal.anchor_id, False)
            tx.set_anchor_active(retired.anchor_id, True)
        with store.read() as tx:
            assert tx.active_index_keys(10) == frozenset({"npm", "pypi"})

    def test_anchors_below_index_key(self, store: Store) -> None:
        npm = anchor("pkg:npm/*", created=at(0), keys=("k1",))
        acme = anchor("pkg:npm/%40acme/*", created=at(1), keys=("k2",))
        deep = anchor("pkg:npm/%40acme/x/*", created=at(2))
        versioned = anchor("pkg:npm/a@1", created=at(3))
        sibling = anchor("pkg:npmx/*", created=at(4))  # shares the prefix, not the segment
        retired = anchor("pkg:npm/%40old/*", created=at(5), active=False)
        with store.transaction() as tx:
            for a, key in (
                (npm, "pkg:npm"),
                (acme, "pkg:npm/%40acme"),
                (deep, "pkg:npm/%40acme/x"),
                (versioned, "pkg:npm/a@1"),
                (sibling, "pkg:npmx"),
                (retired, "pkg:npm/%40old"),
            ):
                tx.insert_anchor(a, key)
        with store.read() as tx:
            assert tx.anchors_below_index_key("pkg:npm") == [acme, deep, versioned]
            assert tx.anchors_below_index_key("pkg:npm/%40acme") == [deep]
            assert tx.anchors_below_index_key("pkg:npm/%40acme/x") == []
            assert tx.anchors_below_index_key("pkg:maven") == []

    def test_anchors_by_many_index_keys(self, store: Store) -> None:
        anchors = [anchor(f"pkg:npm/p{i}", created=at(0, micros=i)) for i in range(30)]
        with store.transaction() as tx:
            for i, a in enumerate(anchors):
                tx.insert_anchor(a, f"npm/p{i}")
        keys = [f"npm/p{i}" for i in range(1200)]  # more than any IN-list chunk
        with store.read() as tx:
            assert tx.anchors_by_index_keys(keys) == anchors

    def test_history_of_key(self, store: Store) -> None:
        ids = sorted(uuid.uuid4() for _ in range(3))
        a = anchor(anchor_id=ids[2], key_history=(entry(ids[2], "k1", at(1)),))
        b = anchor("pkg:pypi/*", anchor_id=ids[1], key_history=(entry(ids[1], "k1", at(1)),))
        c = anchor("pkg:gem/*", anchor_id=ids[0], key_history=(entry(ids[0], "k1", at(2)),))
        with store.transaction() as tx:
            for x, ik in ((a, "npm"), (b, "pypi"), (c, "gem")):
                tx.insert_anchor(x, ik)
            tx.set_anchor_active(c.anchor_id, False)  # memberships of inactive anchors too
        with store.read() as tx:
            got = tx.history_of_key("k1")
            assert [e.anchor_id for e in got] == [ids[1], ids[2], ids[0]]
            assert got[0] == b.key_history[0]
            assert tx.history_of_key("nobody") == []

    def test_history_by_fingerprints(self, store: Store) -> None:
        # One public key recorded under two key ids in two anchors (one inactive), another
        # key elsewhere: the query finds a key's memberships by what it is, not what it is
        # called, and revocations come back as stored.
        fp_a, fp_b, fp_c = ("SHA256:" + c * 64 for c in "abc")
        ids = sorted(uuid.uuid4() for _ in range(3))
        revoked = entry(
            ids[0], "k1", at(1), fingerprint=fp_a, revoked_at=at(5), revoke_reason="compromise"
        )
        a = anchor(
            anchor_id=ids[0], key_history=(revoked, entry(ids[0], "k2", at(1), fingerprint=fp_b))
        )
        b = anchor(
            "pkg:pypi/*",
            anchor_id=ids[1],
            key_history=(entry(ids[1], "k1-copy", at(2), fingerprint=fp_a),),
        )
        c = anchor(
            "pkg:gem/*",
            anchor_id=ids[2],
            key_history=(entry(ids[2], "k3", at(0), fingerprint=fp_c),),
        )
        with store.transaction() as tx:
            for x, ik in ((a, "npm"), (b, "pypi"), (c, "gem")):
                tx.insert_anchor(x, ik)
            tx.set_anchor_active(a.anchor_id, False)
        with store.read() as tx:
            got = tx.history_by_fingerprints([fp_a])
            assert got == [revoked, b.key_history[0]]
            assert got[0].revoked_at == at(5) and got[0].revoke_reason == "compromise"
            both = tx.history_by_fingerprints([fp_c, fp_a, fp_a])
            assert [e.key_id for e in both] == ["k3", "k1", "k1-copy"]  # by added_at
            assert tx.history_by_fingerprints([]) == []
            assert tx.history_by_fingerprints(["SHA256:" + "0" * 64]) == []
            many = [f"SHA256:{i:064x}" for i in range(1200)] + [fp_b]  # more than a chunk
            assert [e.key_id for e in tx.history_by_fingerprints(many)] == ["k2"]

    # --- proofs ---------------------------------------------------------------------------

    def test_proof_round_trip_and_idempotent_put(self, store: Store) -> None:
        body = b'{"payload":"\xff\x00binary-safe","signatures":[]}'
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        first = ProofRecord(digest, body, at(0, micros=3), (b"\x30\x82tok",))
        with store.transaction() as tx:
            tx.put_proof(first)
        with store.transaction() as tx:
            tx.put_proof(ProofRecord(first.digest, body, at(9), (b"x",)))
        with store.read() as tx:
            assert tx.get_proof(first.digest) == first
            assert tx.get_proof(addr("absent")) is None

    def test_proof_must_match_its_address(self, store: Store) -> None:
        # Content addressing is checked on write: bytes stored under another digest would
        # later verify as the proof that address names.
        with pytest.raises(ProofIntegrityError) as raised, store.transaction() as tx:
            tx.put_proof(ProofRecord(addr("a"), body_of("b"), at(0)))
        assert addr("a") in str(raised.value) and addr("b") in str(raised.value)
        with store.read() as tx:
            assert tx.get_proof(addr("a")) is None

    def test_proof_timestamps(self, store: Store) -> None:
        digest = addr("2")
        with store.transaction() as tx:
            tx.put_proof(proof("2"))
            tx.add_proof_timestamp(digest, b"tok-1")
        with store.transaction() as tx:
            tx.add_proof_timestamp(digest, b"\x00tok-2")
            tx.add_proof_timestamp(digest, b"tok-1")  # the same token twice is kept once
        with store.read() as tx:
            got = tx.get_proof(digest)
        assert got is not None and got.timestamp_tokens == (b"tok-1", b"\x00tok-2")
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.add_proof_timestamp(addr("3"), b"tok")

    def test_iter_proofs_oldest_first(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.put_proof(proof("c", at(0)))
            tx.put_proof(proof("b", at(1)))
            tx.put_proof(proof("a", at(0)))
            tx.add_proof_timestamp(addr("b"), b"t1")
            tx.add_proof_timestamp(addr("b"), b"t2")
        with store.read() as tx:
            got = list(tx.iter_proofs())
        same_time = sorted([addr("a"), addr("c")])
        assert [p.digest for p in got] == [*same_time, addr("b")]
        assert [p.timestamp_tokens for p in got] == [(), (), (b"t1", b"t2")]

    def test_proof_candidates_page_by_digest(self, store: Store) -> None:
        # Keyset pagination (anchor status reads long lists in pages): digest order, pages of
        # ``limit`` proofs after the last digest seen, tokens kept whole with their proof
        # (a limit on rows would split them), the pages adding up to the unpaged list with
        # nothing twice, and for an index key the proofs not yet indexed included.
        with store.transaction() as tx:
            for label, when in (("c", at(0)), ("b", at(1)), ("a", at(0)), ("e", at(0, micros=1))):
                tx.put_proof(proof(label, when))
            tx.put_proof(proof("d", at(1)))
            tx.add_proof_timestamp(addr("b"), b"t1")
            tx.add_proof_timestamp(addr("b"), b"t2")
        with store.read() as tx:
            whole = list(tx.iter_proof_candidates(""))
            for key in ("", "npm"):
                for limit in (1, 2, 3):
                    pages: list[ProofRecord] = []
                    after = None
                    for _ in range(len(whole) + 1):  # bounded: an ignored cursor must not hang
                        page = list(tx.iter_proof_candidates(key, after, limit))
                        assert len(page) <= limit, (key, limit, page)
                        pages += page
                        if len(page) < limit:
                            break
                        after = page[-1].digest
                    if key == "":
                        assert pages == whole, (limit, pages)
                    digests = [p.digest for p in pages]
                    assert digests == sorted(set(digests)), (key, limit, digests)
            assert list(tx.iter_proof_candidates("", whole[-1].digest)) == []
            for bad in (0, -1):
                with pytest.raises(ValueError, match="at least 1"):
                    list(tx.iter_proof_candidates("npm", None, bad))
            keyed = [p.digest for p in tx.iter_proof_candidates("npm", whole[1].digest)]
        assert [p.digest for p in whole] == sorted(addr(label) for label in "abcde")
        assert {p.digest: p.timestamp_tokens for p in whole}[addr("b")] == (b"t1", b"t2")
        assert all(d > whole[1].digest for d in keyed)

    # --- feed versions ----------------------------------------------------------------------

    def test_feed_versions_one_document_per_version_without_gaps(self, store: Store) -> None:
        d = [addr(label) for label in "defg"]
        with store.transaction() as tx:
            for label in "defg":
                tx.put_proof(proof(label))
            tx.insert_feed_version(FeedVersionRecord(1, d[0], at(1, micros=5)))
            tx.insert_feed_version(FeedVersionRecord(2, d[1], at(2)))
        # Version 2 is taken, whatever the digest; 4 would leave a gap; a proof holds one
        # version; the proof must exist.
        for bad, error in [
            (FeedVersionRecord(2, d[2], at(3)), ConflictError),
            (FeedVersionRecord(1, d[2], at(3)), ConflictError),
            (FeedVersionRecord(4, d[2], at(3)), ConflictError),
            (FeedVersionRecord(3, d[0], at(3)), ConflictError),
            (FeedVersionRecord(3, "sha256:" + "9" * 64, at(3)), NotFoundError),
        ]:
            with pytest.raises(error), store.transaction() as tx:
                tx.insert_feed_version(bad)
        with store.transaction() as tx:
            tx.insert_feed_version(FeedVersionRecord(3, d[2], at(3)))
        with store.read() as tx:
            assert tx.feed_versions() == [
                FeedVersionRecord(1, d[0], at(1, micros=5)),
                FeedVersionRecord(2, d[1], at(2)),
                FeedVersionRecord(3, d[2], at(3)),
            ]
        with pytest.raises(StorageError), store.read() as tx:
            tx.insert_feed_version(FeedVersionRecord(4, d[3], at(4)))

    def test_concurrent_feed_publishers_get_one_version(self, store: Store) -> None:
        """Eight threads record version 1 at once, each for its own proof: exactly one does."""
        labels = [f"feed-{i}" for i in range(8)]
        digests = [addr(label) for label in labels]
        with store.transaction() as tx:
            for label in labels:
                tx.put_proof(proof(label))
        barrier = threading.Barrier(len(digests))
        outcomes: list[str] = []

        def publish(digest: str) -> None:
            barrier.wait()
            try:
                with store.transaction() as tx:
                    tx.insert_feed_version(FeedVersionRecord(1, digest, at(1)))
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("conflict")

        threads = [threading.Thread(target=publish, args=(d,)) for d in digests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
        with store.read() as tx:
            assert len(tx.feed_versions()) == 1

    # --- audit ------------------------------------------------------------------------------

    def test_audit_round_trip_and_chain(self, store: Store) -> None:
        aid = uuid.uuid4()
        records = [
            audit_record("KEY_GENERATED", key_id="k1", timestamp=at(0, micros=11)),
            audit_record(
                "KEY_REVOKED",
                key_id="k1",
                anchor_id=aid,
                actor="böb@example.com",
                details={"reason": "compromise", "nested": {"z": [1, 2], "a": "é"}},
            ),
            audit_record("signer.ceremony.initiated", ceremony_id="cer-1", details={}),
        ]
        with store.transaction() as tx:
            events = [tx.append_audit(r) for r in records]
        assert [e.seq for e in events] == [1, 2, 3]
        assert events[1].prev_hash == events[0].hash
        with store.read() as tx:
            stored = list(tx.iter_audit())
            assert tx.audit_events() == stored
            assert tx.audit_events(AuditQuery()) == stored
        assert stored == events
        for record, event in zip(records, stored, strict=True):
            assert (event.event_id, event.event_type, event.actor, event.timestamp) == (
                record.event_id,
                record.event_type,
                record.actor,
                record.timestamp,
            )
            assert (event.key_id, event.anchor_id, event.ceremony_id) == (
                record.key_id,
                record.anchor_id,
                record.ceremony_id,
            )
            assert event.details == record.details
        check = verify_chain(stored)
        assert check.ok and check.count == 3 and check.head_hash == events[-1].hash

    def test_audit_chain_continues_across_transactions(self, store: Store) -> None:
        for i in range(5):
            with store.transaction() as tx:
                tx.append_audit(audit_record(details={"i": i}))
        with store.read() as tx:
            events = list(tx.iter_audit())
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert verify_chain(events).ok

    def test_duplicate_audit_event_id_conflicts(self, store: Store) -> None:
        record = audit_record()
        with store.transaction() as tx:
            tx.append_audit(record)
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.append_audit(record)
        with store.read() as tx:
            assert len(tx.audit_events()) == 1

    def _audit_fixture(self, store: Store) -> tuple[list[AuditEvent], uuid.UUID]:
        aid = uuid.uuid4()
        with store.transaction() as tx:
            events = [
                tx.append_audit(audit_record("KEY_GENERATED", key_id="k1", timestamp=at(0))),
                tx.append_audit(
                    audit_record("ANCHOR_CREATED", anchor_id=aid, timestamp=at(1, micros=1))
                ),
                tx.append_audit(
                    audit_record("KEY_ADDED", key_id="k1", anchor_id=aid, timestamp=at(2))
                ),
                tx.append_audit(
                    audit_record("signer.ceremony.initiated", ceremony_id="c1", timestamp=at(3))
                ),
                tx.append_audit(
                    audit_record("KEY_REVOKED", key_id="k2", ceremony_id="c1", timestamp=at(4))
                ),
                tx.append_audit(audit_record("KEYSTONE", timestamp=at(5))),
            ]
        return events, aid

    def test_audit_query_filters(self, store: Store) -> None:
        ev, aid = self._audit_fixture(store)

        def q(**kw: Any) -> list[int]:
            with store.read() as tx:
                return [e.seq for e in tx.audit_events(AuditQuery(**kw))]

        assert q(event_type="KEY_*") == [1, 3, 5]
        assert q(event_type="KEY*") == [1, 3, 5, 6]
        assert q(event_type="key_*") == []  # case-sensitive, like the event names
        assert q(event_type="KEY_ADDED") == [3]
        assert q(event_type="KEY_?EVOKED") == [5]
        assert q(event_type="signer.ceremony.*") == [4]
        assert q(event_type="[AK]*_*") == [1, 2, 3, 5]
        assert q(event_type="[!K]*") == [2, 4]
        assert q(event_type="KEY_%") == []  # SQL wildcards are literals here
        assert q(event_type="KEY__ADDED") == []
        # since/until are inclusive, to the microsecond.
        assert q(since=at(1, micros=1)) == [2, 3, 4, 5, 6]
        assert q(since=at(1, micros=2)) == [3, 4, 5, 6]
        assert q(until=at(1, micros=1)) == [1, 2]
        assert q(until=at(1)) == [1]
        assert q(since=at(2), until=at(4)) == [3, 4, 5]
        assert q(key_id="k1") == [1, 3]
        assert q(anchor_id=aid) == [2, 3]
        assert q(anchor_id=uuid.uuid4()) == []
        assert q(ceremony_id="c1") == [4, 5]
        assert q(event_type="KEY_*", ceremony_id="c1", key_id="k2") == [5]
        # limit keeps the oldest matches, after filtering.
        assert q(limit=2) == [1, 2]
        assert q(event_type="KEY_*", limit=2) == [1, 3]
        assert q(event_type="[!K]*", limit=1) == [2]
        assert q(limit=0) == []
        assert q(limit=100) == [1, 2, 3, 4, 5, 6]
        with store.read() as tx:
            assert tx.audit_events(AuditQuery(key_id="k1")) == [ev[0], ev[2]]

    def test_iter_audit_streams_a_long_log(self, store: Store) -> None:
        with store.transaction() as tx:
            for i in range(1500):
                tx.append_audit(audit_record(details={"i": i}))
        with store.read() as tx:
            seen = 0
            for event in tx.iter_audit():
                seen += 1
                assert event.details == {"i": event.seq - 1}
                if seen == 700:  # other reads while a stream is open are fine
                    assert tx.get_key("k1") is None
            assert seen == 1500
            assert verify_chain(tx.iter_audit()).ok
            # A partially consumed stream does not break the end of the transaction.
            next(tx.iter_audit())

    # --- transactions -----------------------------------------------------------------------

    def _populate(self, store: Store) -> TrustAnchor:
        a = anchor(keys=("k1", "k2"))
        with store.transaction() as tx:
            tx.insert_key(key("k1"))
            tx.insert_key(key("k2"))
            tx.insert_anchor(a, "npm")
            tx.put_proof(proof("a"))
            tx.append_audit(audit_record(key_id="k1"))
        return a

    def test_rollback_leaves_nothing(self, store: Store) -> None:
        a = self._populate(store)
        before = snapshot(store)
        token = store.change_token()

        class Boom(Exception):
            pass

        with pytest.raises(Boom), store.transaction() as tx:
            tx.insert_key(key("new"))
            b = anchor("pkg:pypi/*", keys=("new", "k1"))
            tx.insert_anchor(b, "pypi")
            tx.insert_history(entry(a.anchor_id, "new", at(9)))
            tx.update_history(a.key_history[0].revoke(at(5), COMPROMISE))
            tx.set_anchor_active(a.anchor_id, False)
            tx.put_proof(proof("b"))
            tx.add_proof_timestamp(addr("a"), b"token")
            tx.append_audit(audit_record("KEY_GENERATED", key_id="new"))
            tx.append_audit(audit_record("ANCHOR_CREATED", anchor_id=b.anchor_id))
            # The transaction sees its own writes before it fails.
            assert tx.get_key("new") is not None
            assert len(tx.audit_events()) == 3
            raise Boom
        assert snapshot(store) == before
        assert store.change_token() == token
        with store.read() as tx:
            assert tx.anchors_by_index_keys(["pypi"]) == []
            assert tx.get_anchor(a.anchor_id) == a
        # The store is fully usable afterwards and the chain continues from the old head.
        with store.transaction() as tx:
            assert tx.append_audit(audit_record()).seq == 2
        with store.read() as tx:
            assert verify_chain(tx.iter_audit()).ok

    def test_failed_port_call_rolls_back_earlier_writes(self, store: Store) -> None:
        self._populate(store)
        before = snapshot(store)
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_key(key("new"))
            tx.append_audit(audit_record(key_id="new"))
            tx.insert_key(key("k1"))
        assert snapshot(store) == before

    def test_change_token(self, store: Store) -> None:
        t0 = store.change_token()
        assert store.change_token() == t0
        with store.transaction() as tx:
            tx.insert_key(key("k1"))
        t1 = store.change_token()
        assert t1 != t0
        with store.read() as tx:
            tx.list_keys()
            list(tx.iter_audit())
        assert store.change_token() == t1
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.insert_key(key("k2"))
            raise RuntimeError
        assert store.change_token() == t1
        with store.transaction() as tx:
            tx.append_audit(audit_record())
        t2 = store.change_token()
        assert t2 not in (t0, t1)
        with store.transaction() as tx:
            tx.put_proof(proof("c"))
        assert store.change_token() != t2

    def test_read_transaction_refuses_writes(self, store: Store) -> None:
        writes: list[Callable[[Transaction], object]] = [
            lambda tx: tx.insert_key(key("k1")),
            lambda tx: tx.insert_anchor(anchor(), "npm"),
            lambda tx: tx.append_audit(audit_record()),
            lambda tx: tx.put_proof(proof("d")),
        ]
        for write in writes:
            with pytest.raises(StorageError), store.read() as tx:
                write(tx)
        assert snapshot(store)["keys"] == []
        assert snapshot(store)["audit"] == []

    def test_transaction_is_unusable_after_its_block(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.insert_key(key("k1"))
        with pytest.raises(StorageError):
            tx.insert_key(key("k2"))
        with store.read() as rtx:
            pass
        with pytest.raises(StorageError):
            rtx.get_key("k1")

    def test_transactions_do_not_nest(self, store: Store) -> None:
        # Nesting must fail loudly rather than deadlock or silently join the outer one.
        with store.transaction() as tx:
            tx.insert_key(key("k1"))
            with pytest.raises(StorageError), store.transaction():
                pass
            with pytest.raises(StorageError), store.read():
                pass
        with store.read(), pytest.raises(StorageError), store.transaction():
            pass
        with store.read() as tx:
            assert tx.get_key("k1") is not None

    def test_read_sees_a_consistent_snapshot(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.insert_key(key("k1"))

        def writer() -> None:
            with store.transaction() as wtx:
                wtx.insert_key(key("k2"))
                wtx.append_audit(audit_record(key_id="k2"))

        with store.read() as tx:
            assert [k.key_id for k in tx.list_keys()] == ["k1"]
            thread = threading.Thread(target=writer)
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive(), "a reader must not block a writer"
            assert tx.get_key("k2") is None
            assert [k.key_id for k in tx.list_keys()] == ["k1"]
            assert tx.audit_events() == []
        with store.read() as tx:
            assert tx.get_key("k2") is not None

    def test_concurrent_audit_appends_stay_one_chain(self, store: Store) -> None:
        threads, per_thread = 8, 50
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads)

        def worker(n: int) -> None:
            try:
                barrier.wait()
                for i in range(per_thread):
                    with store.transaction() as tx:
                        tx.append_audit(audit_record(actor=f"t{n}", details={"i": i}))
            except BaseException as exc:  # reported below, with the thread's own traceback
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=120)
        assert not errors, errors
        with store.read() as tx:
            events = list(tx.iter_audit())
        assert [e.seq for e in events] == list(range(1, threads * per_thread + 1))
        assert verify_chain(events).ok
        for n in range(threads):
            mine = [e.details["i"] for e in events if e.actor == f"t{n}"]
            assert mine == list(range(per_thread))  # each thread's events in its own order

    def test_concurrent_writers_and_readers(self, store: Store) -> None:
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer(n: int) -> None:
            try:
                for i in range(25):
                    with store.transaction() as tx:
                        tx.insert_key(key(f"w{n}-{i}", created=at(0, micros=i)))
                        tx.append_audit(audit_record(key_id=f"w{n}-{i}"))
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                while not stop.is_set():
                    with store.read() as tx:
                        # Keys and their audit events are committed together: a snapshot
                        # never shows one without the other.
                        assert len(tx.list_keys()) == len(tx.audit_events())
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=reader) for _ in range(2)]
        writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in readers + writers:
            t.start()
        for t in writers:
            t.join(timeout=120)
        stop.set()
        for t in readers:
            t.join(timeout=30)
        assert not errors, errors
        with store.read() as tx:
            assert len(tx.list_keys()) == 100
            assert verify_chain(tx.iter_audit()).count == 100

    def test_closed_store_refuses_work(self, store: Store) -> None:
        store.close()
        with pytest.raises(StorageError), store.read():
            pass
        store.close()  # closing twice is fine

    # --- key lifecycle intents (decision 0016) ------------------------------------------------

    def test_intent_round_trip_replace_and_delete(self, store: Store) -> None:
        from stellakeys.intents import KeyIntent

        first = KeyIntent(
            "k-int",
            "rotate",
            "default",
            "ed25519",
            "software://default",
            at(1, 7),
            {"anchorIds": ["a"], "replaces": "k-old", "revokeReason": "rotation"},
        )
        other = KeyIntent("a-int", "generate", "p", "ed25519", "kms://aws", at(0))
        with store.transaction() as tx:
            tx.put_intent(first)
            tx.put_intent(other)
        with store.read() as tx:
            assert tx.get_intent("k-int") == first
            assert tx.list_intents() == [other, first]  # created_at, then key id
            assert tx.get_intent("nope") is None
        prepared = attrs.evolve(
            first, public_key_pem=PEM, fingerprint="SHA256:" + "ab" * 32, key_store_uri="u#x"
        )
        with store.transaction() as tx:
            tx.put_intent(prepared)  # replaces
        with store.read() as tx:
            assert tx.get_intent("k-int") == prepared
        with store.transaction() as tx:
            tx.delete_intent("k-int")
            tx.delete_intent("never-there")  # no error
        with store.read() as tx:
            assert tx.list_intents() == [other]

    def test_intent_writes_roll_back_and_need_a_write_transaction(self, store: Store) -> None:
        from stellakeys.intents import KeyIntent

        intent = KeyIntent("k-rb", "generate", "default", "ed25519", "software://d", at(0))
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.put_intent(intent)
            raise RuntimeError("boom")
        with store.read() as tx:
            assert tx.get_intent("k-rb") is None
            with pytest.raises(StorageError):
                tx.put_intent(intent)

    # --- the tables as audit verify reads them (issue 20) --------------------------------

    def tamper_history(
        self,
        store: Store,
        anchor_id: uuid.UUID,
        key_id: str,
        column: str,
        value: datetime | str | None,
    ) -> None:
        """Set one column of a key history row behind the adapter's back, as an insider
        with write access to the tables would (guards dropped). Each adapter's subclass
        supplies it."""
        raise NotImplementedError

    def test_audit_state_rows_are_the_listed_objects_as_text(self, store: Store) -> None:
        """The rows audit verify compares are exactly what it compared before, when it
        turned list_keys / list_anchors back into text: every field, times with and without
        microseconds and in other zones, NULLs, inactive anchors, no predicates, order."""
        east = timezone(timedelta(hours=5, minutes=30))
        a1 = anchor("pkg:npm/@scope/*", keys=("k1", "k2", "k3"), created=at(1))
        a2 = anchor(
            "pkg:pypi/x",
            created=at(0, micros=7),
            allowed_predicate_types=(),
            policy_version="v2",
        )
        a3 = anchor(
            "pkg:maven/a/b",
            keys=("k2",),
            created=at(1),
            allowed_predicate_types=("p/one", "p/two"),
            active=False,
        )
        with store.transaction() as tx:
            tx.insert_key(key("k2", created=at(2, micros=1), algorithm="ecdsa-p256"))
            tx.insert_key(key("k1", created=at(2), fingerprint="SHA256:" + "01" * 32))
            tx.insert_key(key("k3", created=datetime(2024, 1, 1, 12, tzinfo=east)))
            for a in (a1, a2, a3):
                tx.insert_anchor(a, a.purl_pattern)
            tx.update_history(
                attrs.evolve(
                    a1.key_history[1],
                    revoked_at=at(30, micros=5),
                    revoke_reason=COMPROMISE,
                    expires_at=datetime(2025, 6, 1, 3, tzinfo=east),
                )
            )
            tx.update_history(attrs.evolve(a1.key_history[2], expires_at=at(90)))
            tx.insert_history(entry(a2.anchor_id, "k3", at(-3, micros=999_999)))
        with store.read() as tx:
            rows = tx.audit_state_rows()
            reference = AuditStateRows.of(tx.list_keys(), tx.list_anchors())
        assert list(rows.keys) == list(reference.keys)
        assert list(rows.anchors) == list(reference.anchors)
        assert list(rows.history) == list(reference.history)
        assert len(rows.history) == 5 and len(rows.anchors) == 3 and len(rows.keys) == 3
        # Spot checks of the text itself (the reference could be wrong the same way).
        assert (
            str(a1.anchor_id),
            "k2",
            "2024-01-16T00:00:00Z",
            "2024-02-14T00:00:00.000005Z",
            COMPROMISE,
            "2025-05-31T21:30:00Z",
            "SHA256:" + "cd" * 32,
        ) in rows.history
        assert (str(a3.anchor_id), "pkg:maven/a/b", "v1", "p/one,p/two", "false") in rows.anchors
        assert (str(a2.anchor_id), "pkg:pypi/x", "v2", "", "true") in rows.anchors

    def _audited_revocation(self, store: Store) -> TrustAnchor:
        """Key k1 in an anchor and revoked, every change logged as stellakeys logs it."""
        from stellakeys.audit import EventType

        fp = "SHA256:" + "cd" * 32
        a = anchor("pkg:npm/*", keys=("k1",), created=at(0))
        revoked = attrs.evolve(a.key_history[0], revoked_at=at(20), revoke_reason=COMPROMISE)
        with store.transaction() as tx:
            tx.insert_key(key("k1", fingerprint=fp))
            tx.append_audit(
                audit_record(
                    EventType.KEY_IMPORTED,
                    key_id="k1",
                    details={"algorithm": "ed25519", "fingerprint": fp},
                )
            )
            tx.insert_anchor(a, "npm")
            tx.append_audit(
                audit_record(
                    EventType.ANCHOR_CREATED,
                    anchor_id=a.anchor_id,
                    details={
                        "purlPattern": a.purl_pattern,
                        "predicateTypes": list(a.allowed_predicate_types),
                        "policyVersion": a.policy_version,
                    },
                )
            )
            tx.append_audit(
                audit_record(
                    EventType.KEY_ADDED,
                    key_id="k1",
                    anchor_id=a.anchor_id,
                    details={"addedAt": "2024-01-15T00:00:00Z"},
                )
            )
            tx.update_history(revoked)
            tx.append_audit(
                audit_record(
                    EventType.KEY_REVOKED,
                    key_id="k1",
                    anchor_id=a.anchor_id,
                    details={"reason": COMPROMISE, "effectiveAt": "2024-02-04T00:00:00Z"},
                )
            )
        return a

    @pytest.mark.parametrize(
        ("column", "value", "field", "implied", "stored"),
        [
            (
                "revoked_at",
                at(20, micros=1),
                "revokedAt",
                "2024-02-04T00:00:00Z",
                "2024-02-04T00:00:00.000001Z",
            ),
            ("revoked_at", None, "revokedAt", "2024-02-04T00:00:00Z", None),
            ("revoke_reason", "superseded", "revokeReason", COMPROMISE, "superseded"),
            (
                "fingerprint",
                "SHA256:" + "ee" * 32,
                "fingerprint",
                "SHA256:" + "cd" * 32,
                "SHA256:" + "ee" * 32,
            ),
            ("added_at", at(-1), "addedAt", "2024-01-15T00:00:00Z", "2024-01-14T00:00:00Z"),
            ("expires_at", at(25), "expiresAt", None, "2024-02-09T00:00:00Z"),
        ],
    )
    def test_audit_verify_reports_a_history_row_changed_behind_its_back(
        self,
        store: Store,
        column: str,
        value: datetime | str | None,
        field: str,
        implied: str | None,
        stored: str | None,
    ) -> None:
        from stellakeys.audit_replay import StateDifference, audit_store

        a = self._audited_revocation(store)
        result, _ = audit_store(store)
        assert result.ok and result.state_checked and result.state_differences == ()
        self.tamper_history(store, a.anchor_id, "k1", column, value)
        result, _ = audit_store(store)
        expected = StateDifference("key_history", f"{a.anchor_id}/k1", field, implied, stored)
        assert not result.ok and result.broken_at is None and result.state_checked
        assert result.state_differences == (expected.describe(),)
        # The reference path (the objects turned into text) finds the same.
        from stellakeys.audit_replay import AuditReplay

        replay = AuditReplay()
        with store.read() as tx:
            for _ in replay.feed(tx.iter_audit()):
                pass
            assert replay.compare(tx.list_keys(), tx.list_anchors()) == [expected]


# --- ceremonies (dual control, issue 5) ---------------------------------------------------------


def ceremony(ceremony_id: str | None = None, **overrides: Any) -> Any:
    """A Pending ceremony created at T0, expiring a day later."""
    from stellakeys.ceremony.model import Ceremony, CeremonyState, new_ceremony_id

    fields: dict[str, Any] = {
        "ceremony_id": ceremony_id or new_ceremony_id(),
        "type": "key-rotation",
        "subject": "Root signing key Q1-2026 \u2014 \u00e9t\u00e9",
        "state": CeremonyState.PENDING,
        "threshold": 2,
        "required_approvers": 3,
        "payload_json": {"keyId": "root-2026-q1", "anchorIds": [], "n": 2**53 - 1},
        "created_at": at(0, micros=7),
        "expires_at": at(1),
        "initiator": "admin@company.com",
        "allowed_approvers": ("a@x", "b@x", "c@x"),
    }
    fields.update(overrides)
    return Ceremony(**fields)


def approval(ceremony_id: str, approver: str, *, when: datetime | None = None, **kw: Any) -> Any:
    from stellakeys.ceremony.model import Approval, Decision, new_approval_id

    return Approval(
        approval_id=kw.pop("approval_id", None) or new_approval_id(),
        ceremony_id=ceremony_id,
        approver=approver,
        decision=kw.pop("decision", Decision.APPROVE),
        reason=kw.pop("reason", "Reviewed"),
        approved_at=when or at(0, micros=100),
        **kw,
    )


class CeremonyStorageConformance:
    """The ceremony methods of the Transaction port. Subclass it beside StoreConformance with
    the same ``store`` fixture (a fresh, empty store)."""

    def test_round_trip_every_field(self, store: Store) -> None:
        from stellakeys.ceremony.model import CeremonyState, Decision

        c = ceremony(notifications_sent=("expiry-75",))
        with store.transaction() as tx:
            tx.insert_ceremony(c)
            tx.insert_approval(
                approval(
                    c.ceremony_id,
                    "b@x",
                    decision=Decision.REJECT,
                    signature_valid=True,
                    signature_key_id="b-key",
                    signature_algorithm="ed25519",
                    signature_fingerprint="SHA256:" + "cd" * 32,
                    envelope_json=b'{"payload":"e30=","payloadType":"x","signatures":[]}',
                )
            )
        with store.read() as tx:
            got = tx.get_ceremony(c.ceremony_id)
            assert tx.get_ceremony("cer-0000000000000000") is None
        assert got is not None
        assert attrs.evolve(got, approvals=()) == c
        assert got.digest == c.digest
        assert got.created_at == at(0, micros=7) and got.created_at.tzinfo == UTC
        [a] = got.approvals
        assert a.decision is Decision.REJECT and a.signature_valid
        assert (a.signature_key_id, a.signature_algorithm) == ("b-key", "ed25519")
        assert a.envelope_json == b'{"payload":"e30=","payloadType":"x","signatures":[]}'
        assert got.state is CeremonyState.PENDING

    def test_duplicate_ceremony_conflicts_and_approvals_come_separately(self, store: Store) -> None:
        c = ceremony()
        with store.transaction() as tx:
            tx.insert_ceremony(c)
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_ceremony(c)
        with pytest.raises(ValueError), store.transaction() as tx:
            tx.insert_ceremony(ceremony(approvals=(approval(c.ceremony_id, "a@x"),)))

    def test_update_changes_only_the_mutable_fields(self, store: Store) -> None:
        from stellakeys.ceremony.model import CeremonyState

        c = ceremony()
        with store.transaction() as tx:
            tx.insert_ceremony(c)
        changed = attrs.evolve(
            c,
            state=CeremonyState.APPROVED,
            subject="a different subject",
            threshold=3,
            payload_json={"keyId": "other"},
            expires_at=at(5),
            notifications_sent=("expiry-90", "expiry-75"),
        )
        with store.transaction() as tx:
            tx.update_ceremony(changed)
        with store.read() as tx:
            got = tx.get_ceremony(c.ceremony_id)
        assert got is not None
        assert got.state is CeremonyState.APPROVED
        assert got.notifications_sent == ("expiry-90", "expiry-75")
        assert (got.subject, got.threshold, got.payload, got.expires_at) == (
            c.subject,
            c.threshold,
            c.payload,
            c.expires_at,
        )
        done = attrs.evolve(
            got, state=CeremonyState.EXECUTED, executed_at=at(0.5), result_json={"keyId": "k"}
        )
        with store.transaction() as tx:
            tx.update_ceremony(done)
        with store.read() as tx:
            final = tx.get_ceremony(c.ceremony_id)
        assert final is not None and final.result == {"keyId": "k"}
        assert final.executed_at == at(0.5)
        # Terminal: never changes again.
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.update_ceremony(attrs.evolve(done, state=CeremonyState.CANCELLED))
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.update_ceremony(ceremony())

    def test_one_decision_per_approver(self, store: Store) -> None:
        c = ceremony()
        first = approval(c.ceremony_id, "a@x")
        with store.transaction() as tx:
            tx.insert_ceremony(c)
            tx.insert_approval(first)
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_approval(approval(c.ceremony_id, "a@x"))
        with pytest.raises(ConflictError), store.transaction() as tx:
            tx.insert_approval(approval(c.ceremony_id, "b@x", approval_id=first.approval_id))
        with pytest.raises(NotFoundError), store.transaction() as tx:
            tx.insert_approval(approval("cer-0000000000000000", "a@x"))
        # The same approver on another ceremony is fine.
        other = ceremony()
        with store.transaction() as tx:
            tx.insert_ceremony(other)
            tx.insert_approval(approval(other.ceremony_id, "a@x"))

    def test_approvals_ordered_by_time_then_id(self, store: Store) -> None:
        c = ceremony()
        with store.transaction() as tx:
            tx.insert_ceremony(c)
            tx.insert_approval(approval(c.ceremony_id, "c@x", when=at(0.3)))
            tx.insert_approval(
                approval(c.ceremony_id, "b@x", when=at(0.1), approval_id="apr-" + "2" * 16)
            )
            tx.insert_approval(
                approval(c.ceremony_id, "a@x", when=at(0.1), approval_id="apr-" + "1" * 16)
            )
        with store.read() as tx:
            got = tx.get_ceremony(c.ceremony_id)
        assert got is not None
        assert [a.approver for a in got.approvals] == ["a@x", "b@x", "c@x"]

    def test_list_ordered_and_filtered_by_state(self, store: Store) -> None:
        from stellakeys.ceremony.model import CeremonyState

        late = ceremony(created_at=at(0.2), expires_at=at(2))
        early = ceremony(created_at=at(0.1), expires_at=at(2), state=CeremonyState.APPROVED)
        with store.transaction() as tx:
            tx.insert_ceremony(late)
            tx.insert_ceremony(early)
            tx.insert_approval(approval(early.ceremony_id, "a@x"))
        with store.read() as tx:
            assert [c.ceremony_id for c in tx.list_ceremonies()] == [
                early.ceremony_id,
                late.ceremony_id,
            ]
            approved = tx.list_ceremonies([CeremonyState.APPROVED])
            assert [c.ceremony_id for c in approved] == [early.ceremony_id]
            assert len(approved[0].approvals) == 1
            assert tx.list_ceremonies([CeremonyState.EXECUTED]) == []
            assert tx.list_ceremonies([]) == []

    def test_rollback_and_read_only(self, store: Store) -> None:
        c = ceremony()
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.insert_ceremony(c)
            tx.insert_approval(approval(c.ceremony_id, "a@x"))
            raise RuntimeError("boom")
        with store.read() as tx:
            assert tx.get_ceremony(c.ceremony_id) is None
            with pytest.raises(StorageError):
                tx.insert_ceremony(c)
        with store.transaction() as tx:
            tx.insert_ceremony(c)
        with store.read() as tx:
            with pytest.raises(StorageError):
                tx.insert_approval(approval(c.ceremony_id, "a@x"))
            with pytest.raises(StorageError):
                tx.update_ceremony(c)

    def test_concurrent_approvals_by_one_approver_keep_one(self, store: Store) -> None:
        c = ceremony()
        with store.transaction() as tx:
            tx.insert_ceremony(c)
        outcomes: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def approve(i: int) -> None:
            who = "a@x" if i % 2 else f"p{i}@x"
            barrier.wait()
            try:
                with store.transaction() as tx:
                    tx.insert_approval(approval(c.ceremony_id, who))
                result = "ok"
            except ConflictError:
                result = "conflict"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=approve, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(outcomes) == ["conflict"] * 3 + ["ok"] * 5
        with store.read() as tx:
            got = tx.get_ceremony(c.ceremony_id)
        assert got is not None and len(got.approvals) == 5

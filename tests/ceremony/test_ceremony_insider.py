"""Dual control against an insider (issue 15, decision 0015): a database writer, a config editor
and a removed approver, each acting alone, cannot get a protected operation executed.

The database-writer attacks run on SQLite and on PostgreSQL (a throwaway server, started by
tests/postgres/pg_server.py). They go around the schema's defence-in-depth triggers exactly as
a writer with the table owner's rights can (DROP TRIGGER / DISABLE TRIGGER), so what is tested
is the re-verification at execution, not the triggers.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ceremony_support import (
    CISO,
    INITIATOR,
    LEAD,
    OFFICER_1,
    PROFILES,
    World,
    approvers_document,
    make_world,
)

from stellakeys.audit import AuditQuery, AuditRecord, EventType
from stellakeys.ceremony._canonical import canonical_json
from stellakeys.ceremony.authorization import CeremonyAuthorizer
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.errors import CeremonyStateError
from stellakeys.ceremony.model import CeremonyState
from stellakeys.ceremony.service import CeremonyService
from stellakeys.config import Settings
from stellakeys.crypto import get_algorithm
from stellakeys.errors import PolicyError
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.manager import KeyManager
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "postgres"))
from pg_server import MISSING, PostgresServer, find_bin_dir

DISCOUNTED = "signer.ceremony.approval_discounted"
REFUSED = "signer.ceremony.execution_refused"


# --- backends -------------------------------------------------------------------------------


class Backend:
    """A store plus a raw connection as the database writer has it."""

    def __init__(self, kind: str, store: Any, raw: Any) -> None:
        self.kind = kind
        self.store = store
        self.raw = raw

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> None:
        if self.kind == "sqlite":
            self.raw.execute(query, params)
            self.raw.commit()
        else:
            self.raw.execute(query.replace("?", "%s"), params)

    def table(self, name: str) -> str:
        return name if self.kind == "sqlite" else f"signer.{name}"

    def drop_trigger(self, table: str, trigger: str) -> None:
        if self.kind == "sqlite":
            self.sql(f"DROP TRIGGER {trigger}")
        else:
            self.sql(f"ALTER TABLE signer.{table} DISABLE TRIGGER {trigger}")

    def time(self, value: Any) -> Any:
        from stellakeys.storage._codec import to_micros

        return to_micros(value) if self.kind == "sqlite" else value


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    if find_bin_dir() is None:
        pytest.fail(MISSING)
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


_dbs = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "c.db"
        store = SqliteStore(path)
        raw = sqlite3.connect(path)
        try:
            yield Backend("sqlite", store, raw)
        finally:
            raw.close()
            store.close()
        return
    import psycopg

    from stellakeys.storage.postgres import PostgresStore

    server: PostgresServer = request.getfixturevalue("pg")
    url = server.create_database(f"insider_{os.getpid()}_{next(_dbs)}")
    store = PostgresStore.connect(url, migrate=True)
    raw = psycopg.connect(url, autocommit=True)
    try:
        yield Backend("postgres", store, raw)
    finally:
        raw.close()
        store.close()


@pytest.fixture
def world(backend: Backend, tmp_path: Path) -> World:
    return make_world(backend.store, tmp_path)


def _approved(world: World, key_id: str = "root-2026") -> str:
    c = world.create(payload={"keyId": key_id})
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    assert world.service.get(c.ceremony_id).state is CeremonyState.APPROVED
    return c.ceremony_id


def _codes(world: World, cid: str) -> list[tuple[str, str]]:
    return [
        (e.details["approver"], e.details["code"])
        for e in world.manager.audit_events(AuditQuery(event_type=DISCOUNTED, ceremony_id=cid))
    ]


# --- a database writer ------------------------------------------------------------------------


def test_db_writer_changes_the_payload_after_approval(world: World, backend: Backend) -> None:
    cid = _approved(world)
    payload = world.service.get(cid).payload
    payload["keyId"] = "planted-by-dba"
    backend.drop_trigger("ceremonies", "ceremonies_terms_fixed")
    backend.sql(
        f"UPDATE {backend.table('ceremonies')} SET payload = ? WHERE id = ?",
        (canonical_json(payload).decode(), cid),
    )
    assert world.service.get(cid).payload["keyId"] == "planted-by-dba"

    with pytest.raises(CeremonyStateError, match="0 of the 2 approvals needed verify now"):
        world.service.execute(world.actor(INITIATOR), cid)

    assert {k.key_id for k in world.manager.list_keys()} == set()
    assert world.keystore.generated == 0  # refused before any key material was made
    assert sorted(_codes(world, cid)) == [(CISO, "terms-changed"), (LEAD, "terms-changed")]
    [refused] = world.manager.audit_events(AuditQuery(event_type=REFUSED, ceremony_id=cid))
    assert refused.details["validApprovals"] == 0
    assert world.service.get(cid).state is CeremonyState.APPROVED  # not executed


def test_db_writer_inserts_an_approval_with_a_made_up_signature(
    world: World, backend: Backend
) -> None:
    c = world.create(payload={"keyId": "root-2026"})
    world.approve(c.ceremony_id, LEAD)
    # The statement is right; the key that signed it is nobody's.
    forged = world.statement(c.ceremony_id, CISO).sign(
        get_algorithm("ed25519").generate(), "ciso-key"
    )
    backend.sql(
        f"INSERT INTO {backend.table('ceremony_approvals')} (id, ceremony_id, approver,"
        " decision, reason, approved_at, signature_valid, signature_key_id,"
        " signature_algorithm, signature_fingerprint, envelope)"
        " VALUES (?, ?, ?, 'approve', 'ok', ?, ?, 'ciso-key', 'ed25519', NULL, ?)",
        (
            "apr-00000000deadbeef",
            c.ceremony_id,
            CISO,
            backend.time(world.clock.now()),
            1 if backend.kind == "sqlite" else True,
            forged.to_json(),
        ),
    )
    backend.sql(
        f"UPDATE {backend.table('ceremonies')} SET state = 'Approved' WHERE id = ?",
        (c.ceremony_id,),
    )
    assert world.service.get(c.ceremony_id).current_approvals == 2

    with pytest.raises(CeremonyStateError, match="1 of the 2 approvals needed"):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    assert world.manager.list_keys() == []
    assert _codes(world, c.ceremony_id) == [(CISO, "bad-signature")]


def test_db_writer_cannot_weaken_the_policy_with_a_row(world: World, backend: Backend) -> None:
    from stellakeys.ceremony.policy import CeremonyPolicy
    from stellakeys.ceremony.policy_store import stored_policy

    world.service.record_configured_policy()
    plain = KeyManager(backend.store, config=PROFILES, clock=world.clock)  # no ceremony service
    weak = CeremonyPolicy()
    backend.sql(
        f"INSERT INTO {backend.table('ceremony_policy')}"
        " (version, policy, recorded_at, recorded_by, ceremony_id) VALUES (2, ?, ?, 'dba', NULL)",
        (weak.to_json().decode(), backend.time(world.clock.now())),
    )
    with backend.store.read() as tx:
        folded = stored_policy(tx)
    assert folded.policy is not None and folded.policy.requires("trust-anchor-update")
    assert [v for v, _ in folded.disregarded] == [2]
    with pytest.raises(PolicyError, match="protected by dual control"):
        plain.create_anchor("pkg:npm/*", [], [])


# --- the policy belongs to the store -----------------------------------------------------------


def test_a_process_without_ceremony_config_obeys_the_stores_policy(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    w = make_world(store, tmp_path)
    assert w.service.record_configured_policy() is not None
    [event] = w.manager.audit_events(AuditQuery(event_type="signer.ceremony.policy_recorded"))
    assert event.details["version"] == 1
    # Another process, configured with `enabled: false` (or nothing at all).
    other = make_world(SqliteStore(tmp_path / "c.db"), tmp_path, config=CeremonyConfig())
    with pytest.raises(PolicyError, match="protected by dual control"):
        other.manager.generate_key("in-hsm", profile="hsm")
    bare = KeyManager(SqliteStore(tmp_path / "c.db"), config=PROFILES, clock=w.clock)
    with pytest.raises(PolicyError, match="protected by dual control"):
        bare.create_anchor("pkg:npm/*", [], [])
    # A stricter configuration applies on top: it can add, never remove.
    strict = make_world(
        SqliteStore(tmp_path / "c.db"),
        tmp_path,
        config=CeremonyConfig(enabled=False, allow_self_approval=False),
    )
    assert not strict.service.policy().allow_self_approval
    assert strict.service.policy().requires("key-rotation")


def test_weakening_the_policy_is_itself_a_ceremony(tmp_path: Path) -> None:
    from stellakeys.ceremony.audit_check import check_protected_operations
    from stellakeys.ceremony.model import POLICY_UPDATE
    from stellakeys.ceremony.policy import CeremonyPolicy
    from stellakeys.ceremony.policy_store import record_policy

    w = make_world(MemoryStore(), tmp_path)
    doc = approvers_document({k: v.public_key() for k, v in w.keys.items()})
    doc["approverGroups"][0]["operations"].append(POLICY_UPDATE)
    from stellakeys.ceremony.approvers import ApproverRegistry

    w.reconfigure(approvers=ApproverRegistry.from_dict(doc))
    w.service.record_configured_policy()
    w.reconfigure(CeremonyConfig(enabled=False))  # this process asks for less
    weaker = CeremonyPolicy(require_signed_approvals=True, allow_self_approval=False)
    with w.manager.store.transaction() as tx, pytest.raises(PolicyError, match="needs an executed"):
        record_policy(tx, weaker, "dba", w.clock.now())
    with pytest.raises(PolicyError, match="protected by dual control"):
        w.manager.create_anchor("pkg:npm/*", [], [])

    c = w.create(POLICY_UPDATE, payload={"policy": weaker.to_dict()}, subject="Lift dual control")
    w.approve(c.ceremony_id, LEAD)
    w.approve(c.ceremony_id, CISO)
    done = w.service.execute(w.actor(INITIATOR), c.ceremony_id)
    assert done.state is CeremonyState.EXECUTED
    with w.manager.store.read() as tx:
        versions = tx.ceremony_policy_versions()
    assert [(v.version, v.ceremony_id) for v in versions] == [(1, None), (2, c.ceremony_id)]
    w.manager.create_anchor("pkg:npm/*", [], [])  # no longer protected
    assert check_protected_operations(w.manager.audit_events()) == []


def test_audit_check_reports_a_protected_change_without_a_ceremony(tmp_path: Path) -> None:
    from stellakeys.ceremony.audit_check import check_protected_operations

    w = make_world(MemoryStore(), tmp_path)
    w.service.record_configured_policy()
    with w.manager.store.transaction() as tx:  # what a direct writer of the log would add
        tx.append_audit(
            AuditRecord(
                EventType.KEY_REVOKED, "dba", w.clock.now(), key_id="k", details={"reason": "x"}
            )
        )
    [finding] = check_protected_operations(w.manager.audit_events())
    assert finding.operation == "key-revocation"
    assert "without a ceremony" in finding.reason


def test_protected_events_name_their_ceremony(tmp_path: Path) -> None:
    from stellakeys.ceremony.audit_check import check_protected_operations

    w = make_world(MemoryStore(), tmp_path)
    w.service.record_configured_policy()
    cid = _approved(w)
    w.service.execute(w.actor(INITIATOR), cid)
    [generated] = w.manager.audit_events(AuditQuery(event_type=EventType.KEY_GENERATED))
    assert generated.ceremony_id == cid
    assert check_protected_operations(w.manager.audit_events()) == []


# --- approvers read now -----------------------------------------------------------------------


def _file_world(tmp_path: Path) -> tuple[World, Path, dict[str, Any]]:
    w = make_world(MemoryStore(), tmp_path)
    path = tmp_path / "approvers.yaml"
    doc = approvers_document({k: v.public_key() for k, v in w.keys.items()})
    path.write_text(yaml.safe_dump(doc))
    settings = Settings(
        home=tmp_path,
        signer=PROFILES,
        database_url=None,
        actor=INITIATOR,
        document={"ceremonies": {"enabled": True, "approvers": str(path)}},
    )
    # The long-lived service of a server process, built the way the CLI and apps build it:
    # the facade composed from the settings (its authorizer reads approvers.yaml), the
    # service over that facade.
    w.manager = KeyManager(
        w.manager.store,
        config=PROFILES,
        clock=w.clock,
        actor=INITIATOR,
        keystore_context=KeyStoreContext(home=tmp_path),
        open_key_store=w.manager._open_key_store,
        authorizer=CeremonyAuthorizer.from_settings(settings),
    )
    w.service = CeremonyService.from_settings(w.manager, settings)
    return w, path, doc


def test_removed_approver_no_longer_counts_in_a_long_lived_service(tmp_path: Path) -> None:
    w, path, doc = _file_world(tmp_path)
    cid = _approved(w)
    doc["approverGroups"][0]["members"].remove(CISO)
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CeremonyStateError, match="1 of the 2 approvals"):
        w.service.execute(w.actor(INITIATOR), cid)
    assert _codes(w, cid) == [(CISO, "not-eligible")]
    assert w.manager.list_keys() == []


def test_revoked_approver_key_no_longer_counts(tmp_path: Path) -> None:
    w, path, doc = _file_world(tmp_path)
    cid = _approved(w)
    doc["approvers"][LEAD]["keys"][0]["revoked"] = True
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CeremonyStateError, match="1 of the 2 approvals"):
        w.service.execute(w.actor(INITIATOR), cid)
    assert _codes(w, cid) == [(LEAD, "bad-signature")]
    assert w.service.get(cid).state is CeremonyState.APPROVED  # refused, not executed


def test_approver_file_reloads_only_when_it_changed(tmp_path: Path) -> None:
    from stellakeys.ceremony.approvers import ApproverFile

    path = tmp_path / "approvers.yaml"
    path.write_text(yaml.safe_dump({"approverGroups": [{"name": "g", "members": [LEAD]}]}))
    source = ApproverFile(path)
    first = source.get()
    assert source.get() is first  # unchanged: parsed once
    path.write_text(yaml.safe_dump({"approverGroups": [{"name": "g", "members": [OFFICER_1]}]}))
    assert source.get().groups[0].members == (OFFICER_1,)


# --- validate at create what execution requires ------------------------------------------------


@pytest.mark.parametrize(
    ("ceremony_type", "payload", "message"),
    [
        ("key-rotation", {"keyId": "k" * 5_000_000}, "limit is 65536"),
        ("key-rotation", {"keyId": "k" * 201}, "limit is 200"),
        ("key-rotation", {"keyId": "bad\nid"}, "control characters"),
        ("key-rotation", {"keyId": "ALL"}, "reserved"),
        ("hsm-key-generation", {"keyId": " padded"}, "leading or trailing"),
        (
            "trust-anchor-update",
            {"action": "create", "purlPattern": "pkg:npm/" + "a" * 1000},
            "limit is 1000",
        ),
        (
            "trust-anchor-update",
            {"action": "create", "purlPattern": "pkg:npm/*", "predicateTypes": ["a\u0000b"]},
            "control characters",
        ),
        (
            "trust-anchor-update",
            {"action": "create", "purlPattern": "pkg:npm/*", "keyIds": ["x"] * 101},
            "limit is 100",
        ),
        ("key-rotation", {"keyId": "k", "algorithm": "rot13"}, "unknown algorithm"),
        ("key-rotation", {"keyId": "k", "profile": "x" * 101}, "limit is 100"),
        ("key-rotation", {"keyId": "k", "anchorIds": ["a" * 70_000]}, "limit is 65536"),
    ],
)
def test_create_refuses_what_execution_would_refuse_and_writes_nothing(
    tmp_path: Path, ceremony_type: str, payload: dict[str, Any], message: str
) -> None:
    w = make_world(MemoryStore(), tmp_path)
    before = w.manager.audit_events()
    with pytest.raises(PolicyError, match=message) as caught:
        w.create(ceremony_type, payload=payload)
    assert len(str(caught.value)) < 500  # the 5 MB value is not echoed back
    assert w.manager.audit_events() == before
    assert w.service.list() == []


def test_execution_uses_the_same_limits(tmp_path: Path) -> None:
    w = make_world(MemoryStore(), tmp_path, config=CeremonyConfig())
    for call in (
        lambda: w.manager.generate_key("k" * 5_000_000),
        lambda: w.manager.create_anchor("pkg:npm/*", [], ["p" * 501]),
        lambda: w.manager.create_anchor("pkg:npm/" + "a" * 1000, [], []),
    ):
        with pytest.raises(PolicyError):
            call()
    assert w.manager.audit_events() == []


def test_store_minimum_threshold_applies_to_a_laxer_process(tmp_path: Path) -> None:
    from stellakeys.ceremony.policy import CeremonyPolicy, PolicyVersion
    from stellakeys.ceremony.policy_store import record_policy

    store = SqliteStore(tmp_path / "c.db")
    w = make_world(store, tmp_path)
    with store.transaction() as tx:
        record_policy(
            tx,
            CeremonyPolicy.from_config(CeremonyConfig(enabled=True)).stricter(
                CeremonyPolicy.from_dict({"rules": {"key-rotation": {"minimum": 3}}})
            ),
            "ops",
            w.clock.now(),
        )
    with pytest.raises(PolicyError, match="outside 3"):
        w.create(payload={"keyId": "root"}, threshold=2)
    c = w.create(payload={"keyId": "root"}, expires_in=timedelta(hours=1))
    assert c.threshold == 3
    with store.read() as tx:
        assert isinstance(tx.ceremony_policy_versions()[0], PolicyVersion)


def test_policy_versions_are_append_only_in_memory() -> None:
    _append_only(MemoryStore(), None)


def test_policy_versions_are_append_only(backend: Backend) -> None:
    _append_only(backend.store, backend)


def _append_only(store: Any, backend: Backend | None) -> None:
    from datetime import UTC, datetime

    from stellakeys.ceremony.policy import CeremonyPolicy, PolicyVersion
    from stellakeys.errors import ConflictError, NotFoundError

    at = datetime(2026, 1, 16, 10, 0, tzinfo=UTC)
    v1 = PolicyVersion(1, CeremonyPolicy().to_json(), at, "ops")
    with store.transaction() as tx:
        tx.insert_ceremony_policy(v1)
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.insert_ceremony_policy(v1)
    with pytest.raises(NotFoundError), store.transaction() as tx:
        tx.insert_ceremony_policy(
            PolicyVersion(2, v1.policy_json, at, "ops", "cer-0000000000000000")
        )
    with store.read() as tx:
        assert tx.ceremony_policy_versions() == [v1]
    if backend is not None:  # the schema refuses changes, as for the audit log
        import psycopg

        with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
            backend.sql(f"UPDATE {backend.table('ceremony_policy')} SET recorded_by = 'dba'")

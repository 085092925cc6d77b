"""Ceremonies as explicit authorization: the pure decision rules, and what a caller holding
an :class:`Authorization` (forged, stale, replayed or boastful) can and cannot do with it."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from ceremony_support import (
    CISO,
    INITIATOR,
    LEAD,
    OUTSIDER,
    SUSPENDED,
    World,
    approvers_document,
    make_world,
)

from stellakeys.audit import AuditQuery, EventType
from stellakeys.ceremony.approvers import ApproverRegistry
from stellakeys.ceremony.authorization import CeremonyAuthorizer, ExecutionRefusedError
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.errors import CeremonyStateError
from stellakeys.ceremony.model import CeremonyState, Decision, new_ceremony_id
from stellakeys.ceremony.ports import Authorization
from stellakeys.ceremony.rules import (
    Accepted,
    Refusal,
    RefusalCode,
    Submission,
    check_decision,
    decide,
)
from stellakeys.errors import NotFoundError, PolicyError
from stellakeys.manager import KeyManager
from stellakeys.storage.memory import MemoryStore


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(MemoryStore(), tmp_path)


def _approved(world: World, key_id: str = "root-auth") -> str:
    c = world.create(payload={"keyId": key_id})
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    return c.ceremony_id


def _authorization(world: World, ceremony_id: str, actor: str = INITIATOR) -> Authorization:
    c = world.service.get(ceremony_id)
    return Authorization(c, c.approvals, actor)


# --- the pure rules ------------------------------------------------------------------------


def test_check_decision_accepts_a_good_signed_approval_and_writes_nothing(world: World) -> None:
    c = world.create()
    before = len(world.manager.audit_events())
    envelope = world.sign(c.ceremony_id, LEAD)
    policy = world.service.policy()
    sub = Submission(envelope)
    assert check_decision(c, world.actor(LEAD), sub, policy, world.service.approvers) is None
    verdict = decide(c, world.actor(LEAD), sub, policy, world.service.approvers)
    assert isinstance(verdict, Accepted)
    assert verdict.decision is Decision.APPROVE and verdict.envelope_json == envelope.to_json()
    assert verdict.signature["signatureFingerprint"].startswith("SHA256:")
    assert len(world.manager.audit_events()) == before  # pure: nothing recorded


@pytest.mark.parametrize(
    ("who", "code"),
    [
        (SUSPENDED, RefusalCode.MISSING_SCOPE),
        (OUTSIDER, RefusalCode.NOT_ELIGIBLE),
    ],
)
def test_check_decision_refuses_actors_without_authority(
    world: World, who: str, code: RefusalCode
) -> None:
    c = world.create()
    refusal = check_decision(
        c,
        world.actor(who),
        Submission(world.sign(c.ceremony_id, LEAD)),
        world.service.policy(),
        world.service.approvers,
    )
    assert isinstance(refusal, Refusal) and refusal.code is code


def test_check_decision_refuses_the_initiator_and_unsigned_and_other_terms(world: World) -> None:
    c = world.create()
    policy, registry = world.service.policy(), world.service.approvers
    lead = world.actor(LEAD)
    initiator = attrs.evolve(lead, identity=INITIATOR)  # even holding the scope
    signed = Submission(world.sign(c.ceremony_id, LEAD))
    found = check_decision(c, initiator, signed, policy, registry)
    assert found is not None and found.code is RefusalCode.INITIATOR
    unsigned = Submission(None, Decision.APPROVE, "looks fine")
    found = check_decision(c, lead, unsigned, policy, registry)
    assert found is not None and found.code is RefusalCode.UNSIGNED
    # The same statement judged against changed terms (a database writer edited the row).
    changed = attrs.evolve(c, subject="something else")
    found = check_decision(changed, lead, signed, policy, registry)
    assert found is not None and found.code is RefusalCode.PAYLOAD_MISMATCH
    assert found.details["signatureKeyId"]  # which key signed is still recorded
    wrong = Submission(world.sign(c.ceremony_id, LEAD), Decision.REJECT)
    found = check_decision(c, lead, wrong, policy, registry)
    assert found is not None and found.code is RefusalCode.DECISION_MISMATCH


def test_refusal_codes_are_the_audit_codes(world: World) -> None:
    c = world.create()
    with pytest.raises(PolicyError):
        world.service.approve(world.actor(OUTSIDER), c.ceremony_id, world.sign(c.ceremony_id, LEAD))
    [event] = world.manager.audit_events(
        AuditQuery(event_type=EventType.CEREMONY_APPROVAL_REJECTED)
    )
    assert event.details["code"] == RefusalCode.NOT_ELIGIBLE.value == "not-eligible"


# --- an authorization is a claim, checked inside the operation's transaction ---------------


def test_a_forged_authorization_for_an_unapproved_ceremony_is_refused(world: World) -> None:
    c = world.create(payload={"keyId": "root-forged"})
    world.approve(c.ceremony_id, LEAD)  # one of two
    forged = _authorization(world, c.ceremony_id)
    with pytest.raises(CeremonyStateError):
        world.manager.rotate_key("root-forged", authorization=forged)
    assert [k.key_id for k in world.manager.list_keys()] == []
    assert world.keystore.generated == 0  # refused before any key material was made
    assert world.service.get(c.ceremony_id).state is CeremonyState.PARTIALLY_APPROVED


def test_an_authorization_naming_no_stored_ceremony_is_refused(world: World) -> None:
    cid = _approved(world)
    real = _authorization(world, cid)
    ghost = Authorization(attrs.evolve(real.ceremony, ceremony_id=new_ceremony_id()), (), INITIATOR)
    with pytest.raises(NotFoundError):
        world.manager.rotate_key("root-auth", authorization=ghost)


def test_a_stale_authorization_is_refused(world: World) -> None:
    """The ceremony as the executor saw it must be the ceremony as stored now."""
    cid = _approved(world)
    real = _authorization(world, cid)
    stale = attrs.evolve(real, ceremony=attrs.evolve(real.ceremony, subject="other terms"))
    with pytest.raises(CeremonyStateError, match="changed during execution"):
        world.manager.rotate_key("root-auth", authorization=stale)
    assert world.service.get(cid).state is CeremonyState.APPROVED


def test_boasted_approvals_count_for_nothing(world: World) -> None:
    """The approvals an authorization carries are informative only: the authorizer counts
    the stored ones, re-verified against the approvers as they are now."""
    cid = _approved(world)
    real = _authorization(world, cid)
    # CISO leaves the custodians; the caller still presents both approvals.
    doc = approvers_document({k: v.public_key() for k, v in world.keys.items()})
    doc["approverGroups"][0]["members"].remove(CISO)
    world.reconfigure(approvers=ApproverRegistry.from_dict(doc))
    with pytest.raises(ExecutionRefusedError, match="1 of the 2 approvals"):
        world.manager.rotate_key("root-auth", authorization=real)
    assert world.manager.list_keys() == []


def test_an_authorization_runs_once_and_its_replay_is_refused(world: World) -> None:
    cid = _approved(world)
    authorization = _authorization(world, cid)
    # Straight through the facade, without the service: the execution is still recorded in
    # the operation's transaction, and every event of the operation names the ceremony.
    world.manager.rotate_key("root-auth", authorization=authorization)
    done = world.service.get(cid)
    assert done.state is CeremonyState.EXECUTED and done.result["keyId"] == "root-auth"
    [generated] = world.manager.audit_events(AuditQuery(event_type=EventType.KEY_GENERATED))
    assert generated.ceremony_id == cid
    with pytest.raises(CeremonyStateError, match="it is Executed"):
        world.manager.rotate_key("root-auth", authorization=authorization)
    with pytest.raises(PolicyError, match="authorises"):
        world.manager.rotate_key("root-auth-2", authorization=authorization)
    with pytest.raises(CeremonyStateError):
        world.service.execute(world.actor(INITIATOR), cid)
    assert [k.key_id for k in world.manager.list_keys()] == ["root-auth"]
    kinds = [e.event_type for e in world.manager.audit_events(AuditQuery(ceremony_id=cid))]
    assert kinds.count(EventType.CEREMONY_EXECUTED) == 1


def test_the_default_authorizer_keeps_the_stores_policy(world: World) -> None:
    """A facade composed with no ceremony configuration, or with ceremonies switched off,
    still refuses what the store's recorded policy protects (decision 0015)."""
    world.service.record_configured_policy()
    for authorizer in (None, CeremonyAuthorizer(CeremonyConfig(enabled=False))):
        bare = KeyManager(world.manager.store, config=world.manager.config, authorizer=authorizer)
        with pytest.raises(PolicyError, match="protected by dual control"):
            bare.rotate_key("root-direct")
    assert world.manager.list_keys() == []


def test_the_service_needs_the_facades_authorizer(world: World) -> None:
    from stellakeys.ceremony.service import CeremonyService

    svc = CeremonyService(world.manager)  # takes the one the facade was composed with
    assert svc.authorizer is world.manager.authorizer
    with pytest.raises(TypeError):
        CeremonyService(object())  # type: ignore[arg-type]

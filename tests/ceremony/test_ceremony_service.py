"""CeremonyService through the KeyManager facade, on the memory and SQLite stores.

Covers the runbook end to end (create, approve, execute with its JSON shapes and audit
structure), every row of its troubleshooting table, the approval prerequisites, replay and
tampering, cancel rules, the guard that refuses protected operations, each ceremony type's
execution, expiry on read and write, and the sweep's reminders.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from ceremony_support import (
    CISO,
    INITIATOR,
    LEAD,
    OFFICER_1,
    OFFICER_2,
    OFFICER_3,
    OUTSIDER,
    SUSPENDED,
    T0,
    TRUST_ADMIN,
    ListNotifier,
    World,
    make_world,
)

from stellakeys.audit import EventType
from stellakeys.ceremony.actor import Actor
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.errors import (
    ApprovalRejectedError,
    CeremonyExpiredError,
    CeremonyStateError,
    UnauthorizedError,
)
from stellakeys.ceremony.model import CeremonyState, Decision
from stellakeys.ceremony.statement import ApprovalStatement
from stellakeys.dsse import Signature
from stellakeys.errors import ConflictError, NotFoundError, PolicyError
from stellakeys.notify.ports import NotificationKind
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore

S = CeremonyState


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    made: list[object] = []

    def factory() -> object:
        if request.param == "memory":
            store: object = MemoryStore()
        else:
            store = SqliteStore(tmp_path / f"db-{len(made)}.sqlite")
        made.append(store)
        return store

    yield factory
    for s in made:
        s.close()  # type: ignore[attr-defined]


@pytest.fixture
def notes() -> ListNotifier:
    return ListNotifier()


@pytest.fixture
def world(store_factory: object, tmp_path: Path, notes: ListNotifier) -> World:
    return make_world(store_factory(), tmp_path, notifier=notes)  # type: ignore[operator]


def rejection(world: World, code: str) -> dict[str, object]:
    found = [
        dict(e.details)
        for e in world.events(EventType.CEREMONY_APPROVAL_REJECTED)
        if e.details.get("code") == code
    ]
    assert found, f"no approval_rejected event with code {code}"
    return found[-1]


# --- the runbook, end to end ------------------------------------------------------------


def test_runbook_flow_create_approve_execute(world: World) -> None:
    created = world.service.create(
        world.actor(INITIATOR),
        "key-rotation",
        "Root signing key Q1-2026",
        {"keyId": "root-2026-q1", "algorithm": "ecdsa-p384"},
        threshold=2,
        required_approvers=3,
        expires_in=timedelta(hours=24),
    )
    assert created.create_response() == {
        "ceremonyId": created.ceremony_id,
        "type": "key-rotation",
        "state": "Pending",
        "threshold": 2,
        "requiredApprovers": 3,
        "currentApprovals": 0,
        "createdAt": "2026-01-16T10:00:00Z",
        "expiresAt": "2026-01-17T10:00:00Z",
        "initiator": INITIATOR,
    }
    # The payload was normalised: the algorithm alias resolved, the profile chosen.
    assert created.payload == {
        "keyId": "root-2026-q1",
        "algorithm": "ecdsa-p384-sha384",
        "profile": "root",
        "anchorIds": [],
    }
    world.clock.advance(timedelta(hours=1, minutes=30))
    after_one, approval = world.approve(created.ceremony_id, LEAD)
    response = after_one.approval_response(approval)
    assert response == {
        "ceremonyId": created.ceremony_id,
        "state": "PartiallyApproved",
        "currentApprovals": 1,
        "threshold": 2,
        "approval": {
            "approvalId": approval.approval_id,
            "approver": LEAD,
            "approvedAt": "2026-01-16T11:30:00Z",
            "reason": "Reviewed rotation plan, verified key parameters",
            "signatureValid": True,
        },
    }
    assert approval.approval_id.startswith("apr-")
    after_two, _ = world.approve(created.ceremony_id, CISO)
    assert after_two.state is S.APPROVED
    world.clock.advance(timedelta(hours=2, minutes=30))
    done = world.service.execute(world.actor(INITIATOR), created.ceremony_id)
    body = done.execution_response()
    assert body["state"] == "Executed" and body["executedAt"] == "2026-01-16T14:00:00Z"
    record = world.manager.get_key("root-2026-q1")
    assert body["result"] == {
        "keyId": "root-2026-q1",
        "publicKey": record.public_key_pem,
        "fingerprint": record.fingerprint,
        "activatedAt": "2026-01-16T14:00:00Z",
        "anchors": [],
    }
    assert list(body["result"])[:4] == ["keyId", "publicKey", "fingerprint", "activatedAt"]
    assert record.algorithm == "ecdsa-p384-sha384"
    assert world.types(created.ceremony_id) == [
        "signer.ceremony.initiated",
        "signer.ceremony.approved",
        "signer.ceremony.approved",
        "signer.ceremony.threshold_reached",
        "signer.ceremony.executed",
    ]
    # The runbook's audit event structure.
    approved = world.events(EventType.CEREMONY_APPROVED)[0]
    assert approved.actor == LEAD and approved.ceremony_id == created.ceremony_id
    assert approved.timestamp == T0 + timedelta(hours=1, minutes=30)
    details = dict(approved.details)
    assert {k: details[k] for k in ("ceremonyType", "approvalId", "currentApprovals")} == {
        "ceremonyType": "key-rotation",
        "approvalId": approval.approval_id,
        "currentApprovals": 1,
    }
    assert details["threshold"] == 2
    assert details["signatureKeyId"] == "security-lead-key"
    assert details["signatureAlgorithm"] in ("ed25519", "ecdsa-p256-sha256")
    assert world.manager.verify_audit().ok


def test_status_keeps_the_signed_envelopes(world: World) -> None:
    c = world.create()
    world.approve(c.ceremony_id, LEAD)
    stored = world.service.get(c.ceremony_id)
    [a] = stored.approvals
    assert a.envelope_json is not None and a.signature_valid
    from stellakeys.ceremony.statement import verify_statement
    from stellakeys.dsse import Envelope

    again = verify_statement(
        Envelope.from_json(a.envelope_json), world.service.approvers.keyring_of(LEAD)
    )
    assert again.statement.ceremony_digest == stored.digest


# --- the troubleshooting table -----------------------------------------------------------


def test_troubleshooting_invalid_signature(world: World) -> None:
    c = world.create()
    wrong = world.keys[OFFICER_1]  # a real key, but not the one registered for LEAD
    with pytest.raises(ApprovalRejectedError, match="re-sign with the correct key") as exc:
        world.service.approve(
            world.actor(LEAD), c.ceremony_id, world.sign(c.ceremony_id, LEAD, key=wrong)
        )
    assert exc.value.code == "invalid-signature"
    assert rejection(world, "invalid-signature")["approver"] == LEAD
    assert world.service.get(c.ceremony_id).current_approvals == 0


def test_troubleshooting_already_approved(world: World) -> None:
    c = world.create()
    world.approve(c.ceremony_id, LEAD)
    with pytest.raises(ApprovalRejectedError, match="a different approver must approve") as exc:
        world.approve(c.ceremony_id, LEAD)
    assert exc.value.code == "already-approved"
    assert rejection(world, "already-approved")
    assert world.service.get(c.ceremony_id).current_approvals == 1


def test_troubleshooting_threshold_not_met(world: World) -> None:
    c = world.create()
    with pytest.raises(CeremonyStateError, match=r"threshold not met.*collect more approvals"):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    world.approve(c.ceremony_id, LEAD)
    with pytest.raises(CeremonyStateError, match=r"1 of 2 approvals"):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    assert world.manager.list_keys() == []


def test_troubleshooting_expired(world: World) -> None:
    c = world.create(expires_in=timedelta(hours=2))
    world.approve(c.ceremony_id, LEAD)
    envelope = world.sign(c.ceremony_id, CISO)  # signed in time...
    world.clock.advance(timedelta(hours=2))  # ...submitted at the expiry instant
    with pytest.raises(ApprovalRejectedError, match="create a new ceremony") as exc:
        world.service.approve(world.actor(CISO), c.ceremony_id, envelope)
    assert exc.value.code == "expired"
    # Expiry was noticed by that write and recorded, along with the rejection.
    assert world.service.get(c.ceremony_id).state is S.EXPIRED
    assert world.types(c.ceremony_id)[-2:] == [
        "signer.ceremony.expired",
        "signer.ceremony.approval_rejected",
    ]
    with pytest.raises(CeremonyExpiredError, match="create a new ceremony"):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    assert world.types(c.ceremony_id).count("signer.ceremony.expired") == 1


def test_expiry_is_recorded_by_a_read(world: World, notes: ListNotifier) -> None:
    c = world.create(expires_in=timedelta(hours=1))
    world.clock.advance(timedelta(hours=1))
    assert [x.state for x in world.service.list([S.PENDING])] == []
    assert world.service.list([S.EXPIRED])[0].ceremony_id == c.ceremony_id
    assert world.types(c.ceremony_id) == ["signer.ceremony.initiated", "signer.ceremony.expired"]
    assert world.service.get(c.ceremony_id).state is S.EXPIRED  # no second event
    assert world.types(c.ceremony_id).count("signer.ceremony.expired") == 1
    [expired] = [n for n in notes.sent if n.kind is NotificationKind.EXPIRED]
    assert set(expired.recipients) >= {INITIATOR, LEAD}


def test_an_approved_ceremony_expires_too(world: World) -> None:
    c = world.create(expires_in=timedelta(hours=1))
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    world.clock.advance(timedelta(hours=1))
    with pytest.raises(CeremonyExpiredError):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    assert world.service.get(c.ceremony_id).state is S.EXPIRED
    assert world.manager.list_keys() == []


# --- approval prerequisites --------------------------------------------------------------


def test_initiator_cannot_approve_own_ceremony_by_default(
    store_factory: object, tmp_path: Path
) -> None:
    world = make_world(store_factory(), tmp_path, initiator_in_group=True)  # type: ignore[operator]
    c = world.create()
    assert INITIATOR not in c.allowed_approvers
    world.keys[INITIATOR] = world.keys[OUTSIDER]  # sign with some key: refused before that
    with pytest.raises(ApprovalRejectedError, match="different approver") as exc:
        world.service.approve(
            Actor(INITIATOR, {"ceremony:approve"}),
            c.ceremony_id,
            world.sign(c.ceremony_id, INITIATOR),
        )
    assert exc.value.code == "initiator"


def test_self_approval_when_configured(store_factory: object, tmp_path: Path) -> None:
    from ceremony_support import approvers_document

    from stellakeys.ceremony.approvers import ApproverRegistry

    world = make_world(
        store_factory(),  # type: ignore[operator]
        tmp_path,
        config=CeremonyConfig(enabled=True, allow_self_approval=True),
        initiator_in_group=True,
    )
    keys = {k: v.public_key() for k, v in world.keys.items()}
    keys[INITIATOR] = world.keys[OUTSIDER].public_key()
    del keys[OUTSIDER]
    world.reconfigure(
        approvers=ApproverRegistry.from_dict(approvers_document(keys, initiator_in_group=True))
    )
    world.keys[INITIATOR] = world.keys[OUTSIDER]
    c = world.create()
    assert INITIATOR in c.allowed_approvers
    updated, _ = world.approve(c.ceremony_id, INITIATOR)
    assert updated.current_approvals == 1


@pytest.mark.parametrize(
    ("who", "scopes", "code"),
    [
        (OUTSIDER, {"ceremony:approve"}, "not-eligible"),  # registered key, in no group
        (TRUST_ADMIN, {"ceremony:approve"}, "not-eligible"),  # in a group, not for this type
        (SUSPENDED, None, "missing-scope"),  # in the group, scopes: []
        (OFFICER_1, set(), "missing-scope"),  # host application's actor without the scope
    ],
)
def test_approver_must_be_allowed_and_hold_the_scope(
    world: World, who: str, scopes: set[str] | None, code: str
) -> None:
    c = world.create()
    actor = world.actor(who) if scopes is None else Actor(who, scopes)
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(actor, c.ceremony_id, world.sign(c.ceremony_id, who))
    assert exc.value.code == code
    event = rejection(world, code)
    assert event["approver"] == who and event["ceremonyType"] == "key-rotation"


def test_unsigned_approvals(store_factory: object, tmp_path: Path) -> None:
    world = make_world(store_factory(), tmp_path)  # type: ignore[operator]
    c = world.create()
    with pytest.raises(ApprovalRejectedError, match="--sign") as exc:
        world.service.approve(world.actor(LEAD), c.ceremony_id, reason="looks fine")
    assert exc.value.code == "unsigned"
    relaxed = make_world(
        store_factory(),  # type: ignore[operator]
        tmp_path,
        config=CeremonyConfig(enabled=True, require_signed_approvals=False),
    )
    c2 = relaxed.create()
    updated, approval = relaxed.service.approve(relaxed.actor(LEAD), c2.ceremony_id, reason="ok")
    assert approval.signature_valid is False and updated.current_approvals == 1
    assert updated.approval_response(approval)["approval"]["signatureValid"] is False


def test_signed_rejection_is_one_decision(world: World) -> None:
    c = world.create()
    updated, decision = world.service.reject(
        world.actor(LEAD),
        c.ceremony_id,
        world.sign(c.ceremony_id, LEAD, Decision.REJECT, reason="key size too small"),
    )
    assert updated.state is S.PENDING and updated.rejections == 1
    assert updated.approval_response(decision)["approval"]["decision"] == "reject"
    declined = rejection(world, "declined")
    assert declined["reason"] == "key size too small" and declined["signatureKeyId"]
    with pytest.raises(ApprovalRejectedError) as exc:
        world.approve(c.ceremony_id, LEAD)
    assert exc.value.code == "already-approved"
    # A statement saying "reject" cannot be submitted as an approval.
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(
            world.actor(CISO), c.ceremony_id, world.sign(c.ceremony_id, CISO, Decision.REJECT)
        )
    assert exc.value.code == "decision-mismatch"


def test_audit_verify_replays_ceremony_states(world: World) -> None:
    """Issue 14 (#8): a ceremony moved to Approved behind the service's back (no events) is
    reported by audit verify; cancelled, declined and expired ones replay cleanly."""
    cancelled = world.create()
    world.service.cancel(world.actor(INITIATOR), cancelled.ceremony_id, "Postponed")
    declined = world.create()
    world.service.reject(
        world.actor(LEAD),
        declined.ceremony_id,
        world.sign(declined.ceremony_id, LEAD, Decision.REJECT, reason="no"),
    )
    c = world.create()
    partly, _ = world.approve(c.ceremony_id, LEAD)
    assert partly.state is S.PARTIALLY_APPROVED
    assert world.manager.verify_audit().ok
    with world.manager.store.transaction() as tx:
        tx.update_ceremony(attrs.evolve(partly, state=S.APPROVED))
    result = world.manager.verify_audit()
    assert not result.ok and result.broken_at is None
    assert result.state_differences == (
        f"ceremony {c.ceremony_id}: state is 'Approved' in the table,"
        " the audit log implies 'PartiallyApproved'",
    )


# --- replay and tampering ------------------------------------------------------------------


def test_replay_onto_another_ceremony_is_rejected(world: World) -> None:
    first = world.create(payload={"keyId": "root-a"})
    second = world.create(payload={"keyId": "root-b"})
    envelope = world.sign(first.ceremony_id, LEAD)
    world.service.approve(world.actor(LEAD), first.ceremony_id, envelope)
    with pytest.raises(ApprovalRejectedError, match="replayed") as exc:
        world.service.approve(world.actor(LEAD), second.ceremony_id, envelope)
    assert exc.value.code == "wrong-ceremony"
    event = rejection(world, "wrong-ceremony")
    assert event["ceremonyType"] == "key-rotation"
    assert [e.ceremony_id for e in world.events(EventType.CEREMONY_APPROVAL_REJECTED)] == [
        second.ceremony_id
    ]


def test_replay_onto_an_altered_payload_is_rejected(world: World) -> None:
    c = world.create(payload={"keyId": "root-a"})
    # The approver was shown (and signed) other terms for this id: a different payload.
    altered = attrs.evolve(c, payload_json={**c.payload, "keyId": "attacker-key"})
    statement = ApprovalStatement.for_ceremony(altered, LEAD, Decision.APPROVE, "ok", T0)
    envelope = statement.sign(world.keys[LEAD], "security-lead-key")
    with pytest.raises(ApprovalRejectedError, match="other terms") as exc:
        world.service.approve(world.actor(LEAD), c.ceremony_id, envelope)
    assert exc.value.code == "payload-mismatch"
    # Also when only the threshold or the expiry differ.
    for change in ({"threshold": 3}, {"expires_at": c.expires_at + timedelta(days=1)}):
        other = attrs.evolve(c, **change)  # type: ignore[arg-type]
        st = ApprovalStatement.for_ceremony(other, LEAD, Decision.APPROVE, "ok", T0)
        with pytest.raises(ApprovalRejectedError):
            world.service.approve(world.actor(LEAD), c.ceremony_id, st.sign(world.keys[LEAD]))
    assert len([e for e in world.events() if e.details.get("code") == "payload-mismatch"]) == 3


def test_tampered_signature_and_statement_are_rejected(world: World) -> None:
    c = world.create()
    envelope = world.sign(c.ceremony_id, LEAD)
    sig = envelope.signatures[0]
    flipped = attrs.evolve(
        envelope, signatures=(Signature(sig.sig[:-1] + bytes([sig.sig[-1] ^ 1]), sig.keyid),)
    )
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(world.actor(LEAD), c.ceremony_id, flipped)
    assert exc.value.code == "invalid-signature"
    # A statement edited after signing (a different reason).
    text = envelope.payload.replace(b"Reviewed", b"Rubber-stamped")
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(
            world.actor(LEAD), c.ceremony_id, attrs.evolve(envelope, payload=text)
        )
    assert exc.value.code == "invalid-signature"
    # Submitted by someone else than the approver it names.
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(world.actor(CISO), c.ceremony_id, envelope)
    assert exc.value.code == "approver-mismatch"
    # Not an approval statement at all.
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(
            world.actor(LEAD), c.ceremony_id, attrs.evolve(envelope, payload_type="text/plain")
        )
    assert exc.value.code == "malformed-statement"
    assert world.service.get(c.ceremony_id).current_approvals == 0
    assert len(world.events(EventType.CEREMONY_APPROVAL_REJECTED)) == 4


def test_unknown_ceremony_is_audited(world: World) -> None:
    with pytest.raises(ApprovalRejectedError) as exc:
        world.service.approve(world.actor(LEAD), "cer-0000000000000000", reason="x")
    assert exc.value.code == "unknown-ceremony"
    assert world.events(ceremony_id="cer-0000000000000000")
    with pytest.raises(NotFoundError):
        world.service.get("cer-0000000000000000")


# --- cancel --------------------------------------------------------------------------------


def test_cancel_rules(world: World) -> None:
    c = world.create()
    with pytest.raises(UnauthorizedError, match="ceremony:cancel"):
        world.service.cancel(world.actor(CISO), c.ceremony_id, "not mine")
    with pytest.raises(PolicyError, match="reason"):
        world.service.cancel(world.actor(INITIATOR), c.ceremony_id, " ")
    done = world.service.cancel(world.actor(INITIATOR), c.ceremony_id, "Postponed")
    assert (done.state, done.cancel_reason) == (S.CANCELLED, "Postponed")
    assert world.types(c.ceremony_id)[-1] == "signer.ceremony.cancelled"
    with pytest.raises(CeremonyStateError):
        world.service.cancel(world.actor(INITIATOR), c.ceremony_id, "again")
    with pytest.raises(ApprovalRejectedError) as exc:
        world.approve(c.ceremony_id, LEAD)
    assert exc.value.code == "not-open"
    # LEAD holds ceremony:cancel and may cancel someone else's, even once Approved.
    c2 = world.create()
    world.approve(c2.ceremony_id, CISO)
    world.approve(c2.ceremony_id, OFFICER_1)
    assert world.service.cancel(
        world.actor(LEAD), c2.ceremony_id, "compromised approver"
    ).state is (S.CANCELLED)
    with pytest.raises(CeremonyStateError):
        world.service.execute(world.actor(INITIATOR), c2.ceremony_id)


def test_cancel_after_execution_is_refused(world: World) -> None:
    c = world.create()
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    with pytest.raises(CeremonyStateError, match="Executed"):
        world.service.cancel(world.actor(INITIATOR), c.ceremony_id, "too late")
    with pytest.raises(CeremonyStateError, match="Executed"):
        world.service.cancel(world.actor(LEAD), c.ceremony_id, "too late")


# --- the guard: protected operations ----------------------------------------------------


def _anchor(world: World, key_id: str = "signing-2025") -> uuid.UUID:
    """An anchor holding one key, made while ceremonies are off."""
    with world.ceremonies_off():
        world.manager.generate_key(key_id)
        return world.manager.create_anchor("pkg:npm/*", [key_id], ["evidence.stella/v1"]).anchor_id


def test_protected_operations_are_refused_outside_a_ceremony(world: World) -> None:
    anchor = _anchor(world)
    m = world.manager
    m.generate_key("plain")  # software key generation is not protected
    for call in (
        lambda: m.rotate_key("new-root"),
        lambda: m.revoke_key(anchor, "signing-2025", "compromise"),
        lambda: m.add_key(anchor, "plain"),
        lambda: m.create_anchor("pkg:maven/*", ["plain"], []),
        lambda: m.deactivate_anchor(anchor),
        lambda: m.generate_key("in-hsm", profile="hsm"),
    ):
        with pytest.raises(PolicyError, match="protected by dual control"):
            call()
    assert {k.key_id for k in m.list_keys()} == {"signing-2025", "plain"}
    assert world.keystore.generated == 2  # refused before any key material was made
    assert m.get_anchor(anchor).active


def test_a_ceremony_authorises_only_its_own_operation(world: World) -> None:
    anchor = _anchor(world)
    c = world.create(payload={"keyId": "root-x"})
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    from stellakeys.ceremony.ports import Authorization

    # The authorization of an Approved rotation, handed to other operations: each one checks
    # the call against the ceremony's stored payload, inside its own transaction.
    approved = world.service.get(c.ceremony_id)
    authorization = Authorization(approved, approved.approvals, INITIATOR)
    with pytest.raises(PolicyError, match="authorises key-rotation"):
        world.manager.revoke_key(anchor, "signing-2025", "compromise", authorization=authorization)
    with pytest.raises(PolicyError, match="authorises"):
        world.manager.rotate_key("other-key", authorization=authorization)
    with pytest.raises(PolicyError, match="authorises"):
        world.manager.rotate_key("root-x", profile="root", authorization=authorization)
    assert world.service.get(c.ceremony_id).state is S.APPROVED


def test_operations_run_directly_when_ceremonies_are_disabled(
    store_factory: object, tmp_path: Path
) -> None:
    world = make_world(store_factory(), tmp_path, config=CeremonyConfig(enabled=False))  # type: ignore[operator]
    world.manager.rotate_key("free")
    assert world.manager.get_key("free")


def test_failed_operation_leaves_the_ceremony_approved(world: World) -> None:
    anchor = _anchor(world)
    c = world.create(
        "key-revocation",
        payload={"keyId": "signing-2025", "anchorId": str(anchor), "reason": "superseded"},
    )
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    # Someone revokes it another way meanwhile (ceremonies briefly off): the operation fails.
    with world.ceremonies_off():
        world.manager.revoke_key(anchor, "signing-2025", "superseded")
    with pytest.raises(ConflictError, match="already revoked"):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    assert world.service.get(c.ceremony_id).state is S.APPROVED
    assert "signer.ceremony.executed" not in world.types(c.ceremony_id)


# --- each ceremony type ----------------------------------------------------------------------


def _approve_and_execute(world: World, ceremony_id: str, approvers: tuple[str, ...]) -> dict:
    for who in approvers:
        world.approve(ceremony_id, who)
    done = world.service.execute(world.actor(INITIATOR), ceremony_id)
    assert done.state is S.EXECUTED
    assert done.result is not None
    return done.result


def test_key_rotation_with_anchors_and_scheduled_revocation(world: World) -> None:
    anchor = _anchor(world, "key-2024-prod")
    c = world.create(
        payload={
            "keyId": "key-2025-prod",
            "replacesKeyId": "key-2024-prod",
            "revokeReplacedAt": "2026-02-16T00:00:00Z",
            "revokeReason": "annual-rotation",
        }
    )
    result = _approve_and_execute(world, c.ceremony_id, (LEAD, CISO))
    assert result["anchors"] == [str(anchor)] and result["replacesKeyId"] == "key-2024-prod"
    status = world.manager.get_anchor(anchor)
    assert set(status.allowed_keyids(T0)) == {"key-2024-prod", "key-2025-prod"}
    old = status.entry("key-2024-prod")
    assert old is not None and old.revoke_reason == "annual-rotation"
    assert old.revoked_at is not None and old.revoked_at.isoformat().startswith("2026-02-16")


def test_key_revocation(world: World) -> None:
    anchor = _anchor(world)
    c = world.create(
        "key-revocation",
        payload={"keyId": "signing-2025", "anchorId": "ALL", "reason": "compromise"},
    )
    result = _approve_and_execute(world, c.ceremony_id, (LEAD, OFFICER_2))
    assert result["keyId"] == "signing-2025" and result["anchorId"] == "ALL"
    assert result["effectiveAt"] == "2026-01-16T10:00:00Z"
    entry = world.manager.get_anchor(anchor).entry("signing-2025")
    assert entry is not None and entry.compromised


def test_trust_anchor_update_actions(world: World) -> None:
    _anchor(world)
    create = world.create(
        "trust-anchor-update",
        payload={
            "action": "create",
            "purlPattern": "pkg:maven/org.apache.*",
            "keyIds": ["signing-2025"],
            "predicateTypes": ["evidence.stella/v1"],
        },
    )
    anchor_id = create.payload["anchorId"]  # chosen at creation, so approvers sign it
    assert uuid.UUID(anchor_id)
    result = _approve_and_execute(world, create.ceremony_id, (TRUST_ADMIN, LEAD))
    assert result["anchorId"] == anchor_id
    assert world.manager.get_anchor(anchor_id).purl_pattern == "pkg:maven/org.apache.*"
    with world.ceremonies_off():
        world.manager.generate_key("extra")
    add = world.create(
        "trust-anchor-update",
        payload={"action": "add-key", "anchorId": anchor_id, "keyId": "extra"},
    )
    result = _approve_and_execute(world, add.ceremony_id, (CISO, TRUST_ADMIN))
    assert result["keyId"] == "extra" and result["fingerprint"].startswith("SHA256:")
    deactivate = world.create(
        "trust-anchor-update", payload={"action": "deactivate", "anchorId": anchor_id}
    )
    _approve_and_execute(world, deactivate.ceremony_id, (LEAD, CISO))
    assert not world.manager.get_anchor(anchor_id).active


def test_recovery_key_activation_is_three_of_five(world: World) -> None:
    anchor = _anchor(world)
    with world.ceremonies_off():
        world.manager.generate_key("recovery-1")  # pre-registered, offline until activated
    c = world.create("recovery-key-activation", payload={"keyId": "recovery-1"})
    assert (c.threshold, c.required_approvers, c.payload["anchorId"]) == (3, 5, "ALL")
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    with pytest.raises(CeremonyStateError):
        world.service.execute(world.actor(INITIATOR), c.ceremony_id)
    result = _approve_and_execute(world, c.ceremony_id, (OFFICER_3,))
    assert result["keyId"] == "recovery-1" and result["activatedAt"] == "2026-01-16T10:00:00Z"
    assert world.manager.get_anchor(anchor).entry("recovery-1") is not None


def test_hsm_key_generation_needs_an_hsm_profile(world: World) -> None:
    with pytest.raises(PolicyError, match="not in an HSM"):
        world.create("hsm-key-generation", payload={"keyId": "k", "profile": "default"})
    c = world.create("hsm-key-generation", payload={"keyId": "hsm-root", "algorithm": "ES256"})
    assert (c.threshold, c.required_approvers) == (2, 4)
    assert c.payload == {"keyId": "hsm-root", "profile": "hsm", "algorithm": "ecdsa-p256-sha256"}
    result = _approve_and_execute(world, c.ceremony_id, (LEAD, OFFICER_1))
    assert result["keyId"] == "hsm-root"
    assert world.manager.get_key("hsm-root").key_store_uri.startswith("hsm://")  # type: ignore[union-attr]


# --- create validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1}, "outside 2..5"),
        ({"threshold": 6}, "outside"),
        ({"threshold": 3, "required_approvers": 2}, "at least the threshold"),
        ({"required_approvers": 9}, "needs 9 eligible approvers"),
        ({"expires_in": timedelta(hours=169)}, "maxTimeout"),
        ({"expires_in": timedelta(0)}, "future"),
        ({"payload": {"keyId": "x", "colour": "red"}}, "unknown field"),
        ({"payload": {"keyId": "x", "algorithm": "gost-r-34.10-2012-512"}}, "no profile using"),
    ],
)
def test_create_validation(world: World, kwargs: dict, match: str) -> None:
    with pytest.raises((PolicyError, ConflictError), match=match):
        world.create(**kwargs)
    assert world.events() == []


def test_create_refuses_unknown_keys_and_duplicates(world: World) -> None:
    _anchor(world)
    with pytest.raises(NotFoundError):
        world.create("key-revocation", payload={"keyId": "nope", "anchorId": "ALL", "reason": "x"})
    with pytest.raises(ConflictError):
        world.create(payload={"keyId": "signing-2025"})


# --- notifications (recorded by a notifier; real SMTP/HTTP in test_ceremony_notify*) -------


def test_notifications_follow_the_runbook_table(world: World, notes: ListNotifier) -> None:
    c = world.create(expires_in=timedelta(hours=10))
    [created] = notes.sent
    assert created.kind is NotificationKind.CREATED
    assert (
        set(created.recipients) == set(c.allowed_approvers) and INITIATOR not in created.recipients
    )
    world.approve(c.ceremony_id, LEAD)
    submitted = notes.sent[-1]
    assert submitted.kind is NotificationKind.APPROVAL_SUBMITTED
    assert LEAD not in submitted.recipients and CISO in submitted.recipients
    world.clock.advance(timedelta(hours=7, minutes=30))  # 75%
    assert world.service.sweep().reminders == ((c.ceremony_id, "expiry-75"),)
    assert world.service.sweep().reminders == ()  # once
    world.clock.advance(timedelta(hours=1, minutes=30))  # 90%
    assert world.service.sweep().reminders == ((c.ceremony_id, "expiry-90"),)
    assert world.service.sweep().reminders == ()
    warnings = [n for n in notes.sent if n.kind is NotificationKind.EXPIRY_WARNING]
    assert [w.title.split(" is ")[1][:3] for w in warnings] == ["75%", "90%"]
    assert LEAD not in warnings[0].recipients
    world.approve(c.ceremony_id, CISO)
    reached = notes.sent[-1]
    assert reached.kind is NotificationKind.THRESHOLD_REACHED and reached.recipients == (INITIATOR,)
    world.clock.advance(timedelta(hours=1))
    assert world.service.sweep().expired == (c.ceremony_id,)
    assert notes.sent[-1].kind is NotificationKind.EXPIRED


def test_jumping_past_90_percent_sends_one_reminder(world: World, notes: ListNotifier) -> None:
    c = world.create(expires_in=timedelta(hours=10))
    world.clock.advance(timedelta(hours=9, minutes=30))
    assert world.service.sweep().reminders == ((c.ceremony_id, "expiry-90"),)
    assert world.service.sweep().reminders == ()
    assert world.service.get(c.ceremony_id).notifications_sent == ("expiry-90", "expiry-75")


def test_a_failing_notifier_never_breaks_a_ceremony(store_factory: object, tmp_path: Path) -> None:
    class Broken:
        def notify(self, notification: object) -> None:
            raise OSError("smtp down")

    world = make_world(store_factory(), tmp_path, notifier=Broken())  # type: ignore[operator]
    c = world.create()
    world.approve(c.ceremony_id, LEAD)
    world.approve(c.ceremony_id, CISO)
    assert world.service.execute(world.actor(INITIATOR), c.ceremony_id).state is S.EXECUTED

"""The pure ceremony model: states, transitions, decisions, expiry, digest, JSON shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from stellakeys.ceremony._canonical import canonical_json
from stellakeys.ceremony.errors import (
    ApprovalRejectedError,
    CeremonyExpiredError,
    CeremonyStateError,
    InvalidTransitionError,
)
from stellakeys.ceremony.model import (
    TRANSITIONS,
    Approval,
    Ceremony,
    CeremonyState,
    Decision,
    new_approval_id,
    new_ceremony_id,
    states_of,
    transition,
)
from stellakeys.errors import PolicyError

T0 = datetime(2026, 1, 16, 10, 0, tzinfo=UTC)
S = CeremonyState

#: The runbook's diagram plus its state table: see docs/decisions/0006-ceremonies.md.
RUNBOOK_EDGES = {
    (S.PENDING, S.PARTIALLY_APPROVED),
    (S.PARTIALLY_APPROVED, S.APPROVED),
    (S.APPROVED, S.EXECUTED),
    (S.PENDING, S.EXPIRED),
    (S.PARTIALLY_APPROVED, S.EXPIRED),
    (S.APPROVED, S.EXPIRED),
    (S.PENDING, S.CANCELLED),
    (S.PARTIALLY_APPROVED, S.CANCELLED),
    (S.APPROVED, S.CANCELLED),
}


def ceremony(**overrides: object) -> Ceremony:
    fields: dict[str, object] = {
        "ceremony_id": new_ceremony_id(),
        "type": "key-rotation",
        "subject": "Root signing key Q1-2026",
        "state": S.PENDING,
        "threshold": 2,
        "required_approvers": 3,
        "payload_json": {"keyId": "root-2026-q1", "algorithm": "ecdsa-p384-sha384"},
        "created_at": T0,
        "expires_at": T0 + timedelta(hours=24),
        "initiator": "admin@company.com",
        "allowed_approvers": ("a@x", "b@x", "c@x"),
    }
    fields.update(overrides)
    return Ceremony(**fields)  # type: ignore[arg-type]


def approval(c: Ceremony, who: str, decision: Decision = Decision.APPROVE) -> Approval:
    return Approval(new_approval_id(), c.ceremony_id, who, decision, "ok", T0, True)


def test_transition_table_is_exactly_the_runbooks() -> None:
    assert TRANSITIONS == RUNBOOK_EDGES
    for a in S:
        for b in S:
            if (a, b) in RUNBOOK_EDGES:
                assert transition(a, b) is b
            else:
                with pytest.raises(InvalidTransitionError):
                    transition(a, b)


def test_terminal_states_have_no_way_out() -> None:
    for state in (S.EXECUTED, S.EXPIRED, S.CANCELLED):
        assert state.terminal
        assert not any(a is state for a, _ in TRANSITIONS)


def test_approvals_walk_pending_partially_approved_approved() -> None:
    c = ceremony()
    c, reached = c.with_decision(approval(c, "a@x"), T0)
    assert (c.state, reached, c.current_approvals) == (S.PARTIALLY_APPROVED, False, 1)
    c, reached = c.with_decision(approval(c, "b@x"), T0)
    assert (c.state, reached, c.current_approvals) == (S.APPROVED, True, 2)
    with pytest.raises(ApprovalRejectedError) as exc:
        c.with_decision(approval(c, "c@x"), T0)
    assert exc.value.code == "not-open"


def test_one_decision_per_approver() -> None:
    c = ceremony(threshold=3)
    c, _ = c.with_decision(approval(c, "a@x"), T0)
    with pytest.raises(ApprovalRejectedError) as exc:
        c.with_decision(approval(c, "a@x"), T0)
    assert exc.value.code == "already-approved"
    assert "a different approver must approve" in str(exc.value)


def test_a_rejection_is_a_decision_that_changes_no_state() -> None:
    c = ceremony()
    c, reached = c.with_decision(approval(c, "a@x", Decision.REJECT), T0)
    assert (c.state, reached, c.current_approvals, c.rejections) == (S.PENDING, False, 0, 1)
    with pytest.raises(ApprovalRejectedError):
        c.with_decision(approval(c, "a@x"), T0)


def test_expiry_is_half_open_and_checked_on_write() -> None:
    c = ceremony()
    end = c.expires_at
    assert not c.is_overdue(end - timedelta(microseconds=1))
    assert c.is_overdue(end)
    assert c.effective_state(end) is S.EXPIRED
    with pytest.raises(ApprovalRejectedError) as exc:
        c.with_decision(approval(c, "a@x"), end)
    assert exc.value.code == "expired"
    with pytest.raises(CeremonyExpiredError, match="create a new ceremony"):
        c.require_executable(end)
    assert c.expired(end).state is S.EXPIRED
    with pytest.raises(CeremonyStateError):
        c.expired(end - timedelta(seconds=1))


def test_execute_only_from_approved() -> None:
    c = ceremony()
    with pytest.raises(CeremonyStateError, match=r"threshold not met.*collect more approvals"):
        c.executed({"keyId": "k"}, T0)
    c, _ = c.with_decision(approval(c, "a@x"), T0)
    c, _ = c.with_decision(approval(c, "b@x"), T0)
    done = c.executed({"keyId": "k"}, T0 + timedelta(hours=1))
    assert done.state is S.EXECUTED and done.result == {"keyId": "k"}
    with pytest.raises(CeremonyStateError, match="Executed"):
        done.executed({"keyId": "k"}, T0)
    with pytest.raises(CeremonyStateError):
        done.cancelled("too late", T0)


def test_cancel_from_open_states_with_a_reason() -> None:
    c = ceremony()
    with pytest.raises(PolicyError, match="reason"):
        c.cancelled("  ", T0)
    done = c.cancelled("Postponed due to schedule conflict", T0)
    assert (done.state, done.cancel_reason, done.cancelled_at) == (
        S.CANCELLED,
        "Postponed due to schedule conflict",
        T0,
    )
    with pytest.raises(CeremonyExpiredError):
        c.cancelled("late", c.expires_at)


def test_threshold_bounds() -> None:
    with pytest.raises(PolicyError):
        ceremony(threshold=1, required_approvers=3)
    with pytest.raises(PolicyError):
        ceremony(threshold=4, required_approvers=3)
    with pytest.raises(PolicyError):
        ceremony(expires_at=T0)


def test_digest_binds_every_agreed_field() -> None:
    base = ceremony()
    variants = [
        attrs.evolve(base, type="key-revocation"),
        attrs.evolve(base, subject="Another subject"),
        attrs.evolve(base, payload_json={"keyId": "root-2026-q2", "algorithm": "ecdsa-p384"}),
        attrs.evolve(base, threshold=3),
        attrs.evolve(base, required_approvers=4),
        attrs.evolve(base, expires_at=base.expires_at + timedelta(seconds=1)),
    ]
    digests = {v.digest for v in variants} | {base.digest}
    assert len(digests) == len(variants) + 1
    # Not bound: who approved so far, the id (bound separately by the statement).
    assert attrs.evolve(base, ceremony_id=new_ceremony_id()).digest == base.digest


def test_payload_is_immutable_and_float_free() -> None:
    c = ceremony()
    c.payload["keyId"] = "changed"
    assert c.payload["keyId"] == "root-2026-q1"
    with pytest.raises(PolicyError, match="fraction"):
        ceremony(payload_json={"x": 1.5})
    with pytest.raises(PolicyError):
        ceremony(payload_json={"x": 2**60})


def test_canonical_json_is_jcs_on_the_subset() -> None:
    expected = '{"a":[true,null,"é"],"b":1}'.encode()
    assert canonical_json({"b": 1, "a": [True, None, "é"]}) == expected
    # RFC 8785 sorts by UTF-16 code units: U+10000 (surrogates D800...) sorts before U+FFFF.
    assert canonical_json({"\uffff": 1, "\U00010000": 2}).decode() == '{"\U00010000":2,"\uffff":1}'
    assert canonical_json({"s": '\u0001\n"\\'}) == b'{"s":"\\u0001\\n\\"\\\\"}'


def test_runbook_json_shapes() -> None:
    c = ceremony()
    assert list(c.create_response()) == [
        "ceremonyId",
        "type",
        "state",
        "threshold",
        "requiredApprovers",
        "currentApprovals",
        "createdAt",
        "expiresAt",
        "initiator",
    ]
    assert c.create_response()["createdAt"] == "2026-01-16T10:00:00Z"
    a = approval(c, "a@x")
    c2, _ = c.with_decision(a, T0)
    body = c2.approval_response(a)
    assert list(body) == ["ceremonyId", "state", "currentApprovals", "threshold", "approval"]
    assert list(body["approval"]) == [
        "approvalId",
        "approver",
        "approvedAt",
        "reason",
        "signatureValid",
    ]
    assert body["state"] == "PartiallyApproved"
    assert list(c.execution_response()) == ["ceremonyId", "state", "executedAt", "result"]
    json.dumps(c2.to_dict())


def test_state_names_parse_like_the_cli_filter() -> None:
    assert states_of(["pending", "partially-approved"]) == (S.PENDING, S.PARTIALLY_APPROVED)
    assert CeremonyState.parse("PartiallyApproved") is S.PARTIALLY_APPROVED
    assert S.PARTIALLY_APPROVED.cli_name == "partially-approved"
    with pytest.raises(PolicyError, match="known"):
        CeremonyState.parse("done")

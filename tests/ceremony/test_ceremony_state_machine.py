"""A hypothesis state machine over create / approve / reject / cancel / expire / execute / sweep.

A small model predicts every outcome (accepted or refused, and the resulting state), and the
invariants check, after every step, on the stored data (read raw, so checking changes nothing):

* states only move along the runbook's transitions;
* approvals are distinct by approver, and never more than the threshold are counted;
* a ceremony is executed at most once, and every generated key belongs to one execution;
* once terminal (Executed, Expired, Cancelled), nothing about a ceremony changes;
* the audit chain stays valid, with one ``threshold_reached`` per ceremony that got there.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from ceremony_support import CISO, CUSTODIANS, INITIATOR, LEAD, OUTSIDER, SUSPENDED, make_world
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from stellakeys.audit import AuditQuery, EventType
from stellakeys.ceremony.actor import SCOPE_APPROVE, Actor
from stellakeys.ceremony.errors import ApprovalRejectedError
from stellakeys.ceremony.model import TRANSITIONS, Ceremony, CeremonyState, Decision
from stellakeys.errors import StellaKeysError
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore

S = CeremonyState
COLLECTING = {S.PENDING, S.PARTIALLY_APPROVED}
PEOPLE = (*CUSTODIANS, INITIATOR, OUTSIDER, SUSPENDED)


@dataclass
class Model:
    threshold: int
    allowed: frozenset[str]
    expires_at: datetime
    state: CeremonyState = S.PENDING
    decided: dict[str, Decision] = field(default_factory=dict)
    executed: int = 0

    def overdue(self, now: datetime) -> bool:
        return not self.state.terminal and now >= self.expires_at

    @property
    def approvals(self) -> int:
        return sum(d is Decision.APPROVE for d in self.decided.values())


class CeremonyMachine(RuleBasedStateMachine):
    store_kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        path = Path(self._tmp.name)
        store: Any = MemoryStore() if self.store_kind == "memory" else SqliteStore(path / "m.db")
        self.world = make_world(store, path)
        self.models: dict[str, Model] = {}
        self.seen: dict[str, Ceremony] = {}
        self.key_counter = 0

    ceremonies = Bundle("ceremonies")

    @property
    def now(self) -> datetime:
        return self.world.clock.now()

    # --- rules ------------------------------------------------------------------------

    @initialize(target=ceremonies)
    def first(self) -> Any:
        return self._create(2, 4)

    @rule(target=ceremonies, threshold=st.integers(2, 4), hours=st.integers(1, 6))
    def create(self, threshold: int, hours: int) -> Any:
        return self._create(threshold, hours)

    def _create(self, threshold: int, hours: int) -> Any:
        self.key_counter += 1
        c = self.world.create(
            payload={"keyId": f"root-{self.key_counter}"},
            threshold=threshold,
            required_approvers=5,
            expires_in=timedelta(hours=hours),
        )
        self.models[c.ceremony_id] = Model(threshold, frozenset(c.allowed_approvers), c.expires_at)
        return c.ceremony_id

    def _decide(self, cid: str, who: str, decision: Decision) -> None:
        m = self.models[cid]
        if m.overdue(self.now):
            m.state = S.EXPIRED  # the statement to sign comes from a read, which records it
        # The model of the service's checks, in the service's order.
        expected: str | None = None
        if who == SUSPENDED:
            expected = "missing-scope"
        elif who == INITIATOR:
            expected = "initiator"
        elif who not in m.allowed:
            expected = "not-eligible"
        elif m.state is S.EXPIRED:
            expected = "expired"
        elif m.state not in COLLECTING:
            expected = "not-open"
        elif who in m.decided:
            expected = "already-approved"
        key = self.world.keys.get(who) or self.world.keys[OUTSIDER]
        envelope = self.world.sign(cid, who, decision, key=key)
        # The initiator acts with the approve scope (as a host application may grant it), so
        # that the self-approval rule is what refuses it.
        actor = Actor(who, {SCOPE_APPROVE}) if who == INITIATOR else self.world.actor(who)
        try:
            if decision is Decision.APPROVE:
                self.world.service.approve(actor, cid, envelope)
            else:
                self.world.service.reject(actor, cid, envelope)
        except ApprovalRejectedError as exc:
            assert exc.code == expected, (exc.code, expected)
            return
        assert expected is None, f"accepted, but expected {expected}"
        m.decided[who] = decision
        if decision is Decision.APPROVE:
            m.state = S.APPROVED if m.approvals >= m.threshold else S.PARTIALLY_APPROVED

    @rule(cid=ceremonies, who=st.sampled_from(PEOPLE))
    def approve(self, cid: str, who: str) -> None:
        self._decide(cid, who, Decision.APPROVE)

    @rule(cid=ceremonies, who=st.sampled_from(CUSTODIANS))
    def reject(self, cid: str, who: str) -> None:
        self._decide(cid, who, Decision.REJECT)

    @rule(cid=ceremonies, who=st.sampled_from((INITIATOR, LEAD, CISO)))
    def cancel(self, cid: str, who: str) -> None:
        m = self.models[cid]
        may = who in (INITIATOR, LEAD)  # LEAD holds ceremony:cancel
        ok = may and not m.state.terminal and not m.overdue(self.now)
        if may and m.overdue(self.now):
            m.state = S.EXPIRED
        try:
            self.world.service.cancel(self.world.actor(who), cid, "changed plans")
        except StellaKeysError:
            assert not ok
            return
        assert ok
        m.state = S.CANCELLED

    @rule(cid=ceremonies, callers=st.integers(1, 3))
    def execute(self, cid: str, callers: int) -> None:
        m = self.models[cid]
        if m.overdue(self.now):
            m.state = S.EXPIRED
        ok = m.state is S.APPROVED
        successes = 0
        for _ in range(callers):
            try:
                self.world.service.execute(self.world.actor(INITIATOR), cid)
                successes += 1
            except StellaKeysError:
                pass
        assert successes == (1 if ok else 0)
        if ok:
            m.state = S.EXECUTED
            m.executed += 1

    @rule(minutes=st.integers(1, 6 * 60))
    def advance(self, minutes: int) -> None:
        self.world.clock.advance(timedelta(minutes=minutes))

    @rule()
    def sweep(self) -> None:
        report = self.world.service.sweep()
        for cid, m in self.models.items():
            if m.overdue(self.now):
                m.state = S.EXPIRED
                assert cid in report.expired

    @rule(cid=ceremonies)
    def read(self, cid: str) -> None:
        m = self.models[cid]
        if m.overdue(self.now):
            m.state = S.EXPIRED
        assert self.world.service.get(cid).state is m.state

    @precondition(lambda self: len(self.models) > 3)
    @rule(cid=consumes(ceremonies))
    def forget(self, cid: str) -> None:
        # Keeps the bundle small so rules hit the same ceremonies often (the ceremony stays in
        # the store and in the invariants).
        del cid

    # --- invariants -------------------------------------------------------------------

    def _stored(self) -> list[Ceremony]:
        with self.world.manager.store.read() as tx:
            return tx.list_ceremonies()

    @invariant()
    def matches_the_model_and_the_runbook(self) -> None:
        for c in self._stored():
            m = self.models[c.ceremony_id]
            assert c.state is m.state, (c.ceremony_id, c.state, m.state)
            before = self.seen.get(c.ceremony_id)
            if before is not None:
                if before.state.terminal:
                    assert c == before, "a terminal ceremony changed"
                elif before.state is not c.state:
                    assert (before.state, c.state) in TRANSITIONS
            approvers = [a.approver for a in c.approvals]
            assert len(approvers) == len(set(approvers))
            assert c.current_approvals <= c.threshold
            assert (c.state is S.APPROVED or c.state is S.EXECUTED) == (
                c.current_approvals >= c.threshold
            ) or c.state in (S.EXPIRED, S.CANCELLED)
            assert (c.executed_at is not None) == (c.state is S.EXECUTED)
            self.seen[c.ceremony_id] = c

    @invariant()
    def executed_at_most_once(self) -> None:
        events = self.world.manager.audit_events(AuditQuery(event_type="signer.ceremony.*"))
        by_type = Counter((e.event_type, e.ceremony_id) for e in events)
        executed = {cid for (t, cid) in by_type if t == EventType.CEREMONY_EXECUTED}
        for (t, _cid), n in by_type.items():
            if t in (EventType.CEREMONY_EXECUTED, EventType.CEREMONY_THRESHOLD_REACHED):
                assert n == 1
            if t in (EventType.CEREMONY_EXPIRED, EventType.CEREMONY_CANCELLED):
                assert n == 1
        keys = {k.key_id for k in self.world.manager.list_keys()}
        assert len(keys) == len(executed) == sum(m.executed for m in self.models.values())

    def teardown(self) -> None:
        assert self.world.manager.verify_audit().ok
        self.world.manager.close()
        self._tmp.cleanup()


CeremonyMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCeremonyStateMachine = CeremonyMachine.TestCase


class SqliteCeremonyMachine(CeremonyMachine):
    store_kind = "sqlite"


SqliteCeremonyMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSqliteCeremonyStateMachine = SqliteCeremonyMachine.TestCase

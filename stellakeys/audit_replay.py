"""Replay the audit log into the state it implies, and compare that with the tables.

The hash chain proves the events were not changed; it says nothing about the tables those
events describe. An insider who drops the schema's triggers can un-revoke a key with one
``UPDATE`` and the chain still verifies. Every state change of stellakeys writes an event
carrying the state it produced (a revocation's resulting time and reason, a ceremony's new
state), so replaying the events in order rebuilds keys, anchors, key history and ceremony
states; any difference from the tables is a change made behind stellakeys' back (or an event
removed with the tail of the log, which ``expected_head`` catches).

Pure: the caller streams events in and hands over the tables' contents. Cost is linear in
the number of events, with memory proportional to the number of keys, anchor memberships and
ceremonies (not events); see benchmarks/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.anchors import TrustAnchor
from stellakeys.audit import (
    AuditEvent,
    AuditRow,
    ChainCheck,
    ChainVerification,
    EventType,
    event_from_row,
)
from stellakeys.ceremony.model import Ceremony
from stellakeys.ceremony.policy import EVENT_POLICY_RECORDED
from stellakeys.keys import KeyRecord
from stellakeys.revocation import legacy_reason
from stellakeys.storage.ports import AuditStateRows, Store

if TYPE_CHECKING:
    from stellakeys.ceremony.audit_check import Finding

__all__ = ["AuditReplay", "StateDifference", "audit_store", "verify_store_audit"]


@attrs.frozen
class StateDifference:
    """One way the tables disagree with what the audit log implies."""

    #: ``key``, ``anchor``, ``key_history`` or ``ceremony``.
    table: str
    #: The row: a key id, an anchor id, ``<anchor id>/<key id>`` or a ceremony id.
    row: str
    field: str
    #: What the audit events imply and what the table holds (``None``: no such row / NULL).
    implied: str | None
    stored: str | None

    def describe(self) -> str:
        return (
            f"{self.table} {self.row}: {self.field} is {_show(self.stored)} in the table,"
            f" the audit log implies {_show(self.implied)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "row": self.row,
            "field": self.field,
            "implied": self.implied,
            "stored": self.stored,
        }


def _show(value: str | None) -> str:
    return "absent/NULL" if value is None else repr(value)


_CEREMONY_STATES = {
    EventType.CEREMONY_INITIATED: "Pending",
    EventType.CEREMONY_THRESHOLD_REACHED: "Approved",
    EventType.CEREMONY_EXECUTED: "Executed",
    EventType.CEREMONY_EXPIRED: "Expired",
    EventType.CEREMONY_CANCELLED: "Cancelled",
}


class AuditReplay:
    """Feed events in seq order (:meth:`feed` passes them through, so one stream serves the
    chain check and the replay), then :meth:`compare` with the tables."""

    def __init__(self) -> None:
        # key id -> {field: value}; values are the strings compared with the tables.
        self.keys: dict[str, dict[str, str | None]] = {}
        self.anchors: dict[str, dict[str, str | None]] = {}
        self.history: dict[tuple[str, str], dict[str, str | None]] = {}
        self.ceremonies: dict[str, str] = {}
        self.events = 0

    def feed(self, events: Iterable[AuditEvent]) -> Iterator[AuditEvent]:
        for event in events:
            self.apply(event)
            yield event

    def apply(self, event: AuditEvent) -> None:
        self.events += 1
        aid = None if event.anchor_id is None else str(event.anchor_id)
        self._apply(event.event_type, event.key_id, aid, event.ceremony_id, event.details)

    def _apply(
        self,
        kind: str,
        key_id: str | None,
        anchor_id: str | None,
        ceremony_id: str | None,
        d: Any,
    ) -> None:
        if kind in (EventType.KEY_GENERATED, EventType.KEY_IMPORTED) and key_id:
            self.keys[key_id] = {
                "algorithm": _str(d.get("algorithm")),
                "fingerprint": _str(d.get("fingerprint")),
            }
        elif kind == EventType.ANCHOR_CREATED and anchor_id is not None:
            self.anchors[anchor_id] = {
                "purlPattern": _str(d.get("purlPattern")),
                "policyVersion": _str(d.get("policyVersion")),
                "predicateTypes": ",".join(str(p) for p in d.get("predicateTypes") or ()),
                "active": "true",
            }
        elif kind == EventType.ANCHOR_DEACTIVATED and anchor_id is not None:
            self.anchors.setdefault(anchor_id, {})["active"] = "false"
        elif kind == EventType.KEY_ADDED and anchor_id is not None and key_id:
            fingerprint = self.keys.get(key_id, {}).get("fingerprint")
            self.history[(anchor_id, key_id)] = {
                "addedAt": _str(d.get("addedAt")),
                "revokedAt": None,
                "revokeReason": None,
                "expiresAt": None,
                "fingerprint": fingerprint,
            }
        elif kind == EventType.KEY_REVOKED and anchor_id is not None and key_id:
            row = self.history.setdefault((anchor_id, key_id), {})
            # The event carries the entry's state after the change (earliest time, strongest
            # reason); reasons logged before the vocabulary are read as the migration did.
            row["revokedAt"] = _str(d.get("effectiveAt"))
            reason = d.get("reason")
            row["revokeReason"] = legacy_reason(reason).value if isinstance(reason, str) else None
        elif ceremony_id is not None:
            state = _CEREMONY_STATES.get(kind)
            if state is None and (
                kind == EventType.CEREMONY_APPROVED
                or (kind == EventType.CEREMONY_APPROVAL_REJECTED and d.get("decision") == "reject")
            ):
                state = _str(d.get("state"))
            if state is not None:
                self.ceremonies[ceremony_id] = state

    def compare(
        self,
        keys: Iterable[KeyRecord],
        anchors: Iterable[TrustAnchor],
        ceremonies: Iterable[Ceremony] = (),
    ) -> list[StateDifference]:
        """Every difference between the replayed state and the tables, in a stable order."""
        return self.compare_rows(AuditStateRows.of(keys, anchors), ceremonies)

    def compare_rows(
        self, state: AuditStateRows, ceremonies: Iterable[Ceremony] = ()
    ) -> list[StateDifference]:
        """:meth:`compare` with the keys, anchors and history as a store's
        ``audit_state_rows`` reads them (the text compared, no objects built)."""
        out: list[StateDifference] = []
        stored_keys: dict[str, dict[str, str | None]] = {
            k: {"algorithm": algorithm, "fingerprint": fingerprint}
            for k, algorithm, fingerprint in state.keys
        }
        _diff(out, "key", self.keys, stored_keys)
        stored_anchors: dict[str, dict[str, str | None]] = {
            aid: {
                "purlPattern": pattern,
                "policyVersion": policy,
                "predicateTypes": types,
                "active": active,
            }
            for aid, pattern, policy, types, active in state.anchors
        }
        stored_history: dict[tuple[str, str], dict[str, str | None]] = {
            (aid, key_id): {
                "addedAt": added,
                "revokedAt": revoked,
                "revokeReason": reason,
                "expiresAt": expires,
                "fingerprint": fingerprint,
            }
            for aid, key_id, added, revoked, reason, expires, fingerprint in state.history
        }
        _diff(out, "anchor", self.anchors, stored_anchors)
        _diff(out, "key_history", self.history, stored_history)
        stored_states: dict[str, dict[str, str | None]] = {
            c.ceremony_id: {"state": c.state.value} for c in ceremonies
        }
        implied_states: dict[str, dict[str, str | None]] = {
            cid: {"state": s} for cid, s in self.ceremonies.items()
        }
        _diff(out, "ceremony", implied_states, stored_states)
        return out


#: The event types :meth:`AuditReplay._apply` reads without a ceremony id (an event with one
#: is always applied); tests/test_audit_perf_chain.py checks that no other type changes state.
_REPLAYED = frozenset(
    {
        EventType.KEY_GENERATED,
        EventType.KEY_IMPORTED,
        EventType.ANCHOR_CREATED,
        EventType.ANCHOR_DEACTIVATED,
        EventType.KEY_ADDED,
        EventType.KEY_REVOKED,
    }
)

#: Event types that can matter to the dual-control check (stellakeys.ceremony.audit_check)
#: are every type but these: proofs are signed and timestamped without a ceremony, and they
#: are most of a log. tests/test_audit_perf_chain.py checks operation_of ignores them.
_NOT_GUARDED = frozenset({EventType.PROOF_SIGNED, EventType.PROOF_TIMESTAMPED})


#: The C scanner json.loads runs (a default JSONDecoder's), called without json.loads' own
#: overhead (type checks, whitespace regexes), which was most of the cost of parsing the small
#: details of a state event.
_scan: Callable[[Any, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(text: Any) -> Any:
    """``json.loads(text)``, the same value for the same text: the scanner's value is taken
    only when it consumed the whole text from its first character; anything else (whitespace
    around, trailing data, invalid JSON, a non-string) goes to json.loads, which decides and
    raises as before (tests/test_audit_perf_chain.py compares the two)."""
    try:
        value, end = _scan(text, 0)
    except Exception:  # json.loads below raises the real error (or parses)
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _row_name(row: str | tuple[str, str]) -> str:
    return row if isinstance(row, str) else "/".join(row)


def _diff(
    out: list[StateDifference],
    table: str,
    implied: dict[Any, dict[str, str | None]],
    stored: dict[Any, dict[str, str | None]],
) -> None:
    if implied == stored:  # the usual answer, found in C: nothing to list
        return
    for row in sorted(implied.keys() | stored.keys()):
        want, have = implied.get(row), stored.get(row)
        name = _row_name(row)
        if want is None:
            out.append(StateDifference(table, name, "row", None, "present"))
            continue
        if have is None:
            out.append(StateDifference(table, name, "row", "present", None))
            continue
        for field in sorted(want):
            # A field the log does not know (an event from an older version without it) is
            # not compared rather than reported.
            if field == "fingerprint" and want[field] is None:
                continue
            if want[field] != have.get(field):
                out.append(StateDifference(table, name, field, want[field], have.get(field)))


def _stream(
    rows: Iterable[AuditRow], replay: AuditReplay | None, guarded: bool
) -> Iterator[AuditEvent]:
    """Drive ``rows`` through the replay (if any) and yield the events the dual-control check
    reads (if ``guarded``), parsing each event's details at most once.

    The dual-control check (stellakeys.ceremony.audit_check.check_protected_operations) can
    report nothing before the log's first policy event (no policy, nothing required); until
    then the only events that change its state are executed ceremonies. So only those are
    built before it, and every event but proofs' after it: the findings are those of the
    whole log (tests/test_audit_perf_chain.py compares them on a log with policies).
    """
    replayed = _REPLAYED
    not_guarded = _NOT_GUARDED
    executed, recorded = EventType.CEREMONY_EXECUTED, EVENT_POLICY_RECORDED
    policy_seen = False
    count = 0
    for count, row in enumerate(rows, 1):  # noqa: B007 - count is read after the loop
        kind = row[2]
        # Most of a log: an event neither check reads (never replayed without a ceremony id,
        # never guarded), refused with one set lookup (the two sets are disjoint:
        # tests/test_audit_perf_chain.py checks it).
        if kind in not_guarded and row[7] is None:
            continue
        for_replay = replay is not None and (kind in replayed or row[7] is not None)
        for_check = False
        if guarded and kind not in not_guarded:
            if kind == recorded:
                policy_seen = True
            for_check = policy_seen or kind == executed
        if not (for_replay or for_check):
            continue
        try:
            text = row[8]
            details = _loads(text) if text != "{}" else {}
            if for_replay and replay is not None:
                replay._apply(kind, row[3], row[4], row[7], details)
            event = event_from_row(row, details) if for_check else None
        except (TypeError, ValueError, AttributeError):
            # Only a row the chain check refuses can be unreadable (every stored event's
            # details are a JSON object); it is reported there, and the tables are not
            # compared. Reading it used to end the command with a traceback.
            continue
        if event is not None:
            yield event
    if replay is not None:
        replay.events += count


def verify_store_audit(
    store: Store, expected_head: str | None = None, *, check_state: bool = True
) -> ChainVerification:
    """``KeyManager.verify_audit``: the hash chain and (``check_state``) the replayed state
    compared with the tables, in one read transaction and one pass over the log."""
    return audit_store(store, expected_head, check_state=check_state)[0]


def audit_store(
    store: Store,
    expected_head: str | None = None,
    *,
    check_state: bool = True,
    check_ceremonies: bool = False,
) -> tuple[ChainVerification, list[Finding]]:
    """``stellaops audit verify`` in one streamed pass over the log: the hash chain, the
    replayed state (``check_state``; compared only when the chain holds) and the dual-control
    check (``check_ceremonies``: stellakeys.ceremony.audit_check over every event, as before).
    Memory stays proportional to keys, anchors and ceremonies, never to events."""
    from stellakeys.ceremony.audit_check import check_protected_operations

    findings: list[Finding] = []
    with store.read() as tx:
        chain = ChainCheck(expected_head)
        replay = AuditReplay()
        events = _stream(
            chain.feed(tx.iter_audit_rows()), replay if check_state else None, check_ceremonies
        )
        if check_ceremonies:
            findings = check_protected_operations(events)
        else:
            for _ in events:
                pass
        result = chain.result()
        if not check_state or result.broken_at is not None:
            return result, findings
        differences = replay.compare_rows(tx.audit_state_rows(), tx.list_ceremonies())
    lines = tuple(d.describe() for d in differences)
    result = attrs.evolve(
        result, ok=result.ok and not lines, state_differences=lines, state_checked=True
    )
    return result, findings

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

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import attrs

from stellakeys.anchors import TrustAnchor
from stellakeys.audit import AuditEvent, ChainVerification, EventType, verify_chain
from stellakeys.ceremony.model import Ceremony
from stellakeys.keys import KeyRecord
from stellakeys.revocation import legacy_reason
from stellakeys.storage.ports import Store
from stellakeys.times import format_time

__all__ = ["AuditReplay", "StateDifference", "verify_store_audit"]


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


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


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
        kind = event.event_type
        d = event.details
        if kind in (EventType.KEY_GENERATED, EventType.KEY_IMPORTED) and event.key_id:
            self.keys[event.key_id] = {
                "algorithm": _str(d.get("algorithm")),
                "fingerprint": _str(d.get("fingerprint")),
            }
        elif kind == EventType.ANCHOR_CREATED and event.anchor_id is not None:
            self.anchors[str(event.anchor_id)] = {
                "purlPattern": _str(d.get("purlPattern")),
                "policyVersion": _str(d.get("policyVersion")),
                "predicateTypes": ",".join(str(p) for p in d.get("predicateTypes") or ()),
                "active": "true",
            }
        elif kind == EventType.ANCHOR_DEACTIVATED and event.anchor_id is not None:
            self.anchors.setdefault(str(event.anchor_id), {})["active"] = "false"
        elif kind == EventType.KEY_ADDED and event.anchor_id is not None and event.key_id:
            fingerprint = self.keys.get(event.key_id, {}).get("fingerprint")
            self.history[(str(event.anchor_id), event.key_id)] = {
                "addedAt": _str(d.get("addedAt")),
                "revokedAt": None,
                "revokeReason": None,
                "expiresAt": None,
                "fingerprint": fingerprint,
            }
        elif kind == EventType.KEY_REVOKED and event.anchor_id is not None and event.key_id:
            row = self.history.setdefault((str(event.anchor_id), event.key_id), {})
            # The event carries the entry's state after the change (earliest time, strongest
            # reason); reasons logged before the vocabulary are read as the migration did.
            row["revokedAt"] = _str(d.get("effectiveAt"))
            reason = d.get("reason")
            row["revokeReason"] = legacy_reason(reason).value if isinstance(reason, str) else None
        elif event.ceremony_id is not None:
            state = _CEREMONY_STATES.get(kind)
            if state is None and (
                kind == EventType.CEREMONY_APPROVED
                or (kind == EventType.CEREMONY_APPROVAL_REJECTED and d.get("decision") == "reject")
            ):
                state = _str(d.get("state"))
            if state is not None:
                self.ceremonies[event.ceremony_id] = state

    def compare(
        self,
        keys: Iterable[KeyRecord],
        anchors: Iterable[TrustAnchor],
        ceremonies: Iterable[Ceremony] = (),
    ) -> list[StateDifference]:
        """Every difference between the replayed state and the tables, in a stable order."""
        out: list[StateDifference] = []
        stored_keys: dict[str, dict[str, str | None]] = {
            k.key_id: {"algorithm": k.algorithm, "fingerprint": k.fingerprint} for k in keys
        }
        _diff(out, "key", self.keys, stored_keys)
        stored_anchors: dict[str, dict[str, str | None]] = {}
        stored_history: dict[tuple[str, str], dict[str, str | None]] = {}
        for a in anchors:
            stored_anchors[str(a.anchor_id)] = {
                "purlPattern": a.purl_pattern,
                "policyVersion": a.policy_version,
                "predicateTypes": ",".join(a.allowed_predicate_types),
                "active": "true" if a.active else "false",
            }
            for e in a.key_history:
                stored_history[(str(a.anchor_id), e.key_id)] = {
                    "addedAt": format_time(e.added_at),
                    "revokedAt": _time(e.revoked_at),
                    "revokeReason": e.revoke_reason,
                    "expiresAt": _time(e.expires_at),
                    "fingerprint": e.fingerprint,
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


def verify_store_audit(
    store: Store, expected_head: str | None = None, *, check_state: bool = True
) -> ChainVerification:
    """``KeyManager.verify_audit``: the hash chain and (``check_state``) the replayed state
    compared with the tables, in one read transaction and one pass over the log."""
    with store.read() as tx:
        if not check_state:
            return verify_chain(tx.iter_audit(), expected_head)
        replay = AuditReplay()
        chain = verify_chain(replay.feed(tx.iter_audit()), expected_head)
        if chain.broken_at is not None:
            return chain
        differences = replay.compare(tx.list_keys(), tx.list_anchors(), tx.list_ceremonies())
    lines = tuple(d.describe() for d in differences)
    return attrs.evolve(
        chain, ok=chain.ok and not lines, state_differences=lines, state_checked=True
    )

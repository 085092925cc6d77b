"""``stellaops audit ...``"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import click

from stellakeys_cli.context import emit_json, json_option, manager, parse_time_option, table
from stellakeys_cli.params import KEY_ID


@click.group()
def audit() -> None:
    """Query and verify the hash-chained audit log."""


@audit.command("query")
@click.option(
    "--type", "--event-type", "event_type", help="Event type, wildcards allowed: 'KEY_*'."
)
@click.option("--from", "from_", help="Earliest time (ISO 8601 or date).")
@click.option("--to", help="Latest time (a bare date includes that whole day).")
@click.option("--since", help="Relative window, e.g. 7d, 24h.")
@click.option("--key-id", type=KEY_ID)
@click.option("--anchor-id")
@click.option("--ceremony-id")
@click.option("--limit", type=click.IntRange(min=1))
@json_option
def query(
    event_type: str | None,
    from_: str | None,
    to: str | None,
    since: str | None,
    key_id: str | None,
    anchor_id: str | None,
    ceremony_id: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Events matching all filters, newest first."""
    from datetime import timedelta

    from stellakeys.audit import AuditQuery
    from stellakeys.times import format_time, parse_duration

    m = manager()
    start: datetime | None = parse_time_option(from_)
    end: datetime | None = parse_time_option(to)
    if to is not None and len(to.strip()) == 10 and end is not None:
        end = end + timedelta(days=1) - timedelta(microseconds=1)
    if since is not None:
        start = max(filter(None, [start, m.clock.now() - parse_duration(since)]))
    try:
        aid = uuid.UUID(anchor_id) if anchor_id else None
    except ValueError:
        raise click.UsageError(f"--anchor-id {anchor_id!r} is not a UUID") from None
    events = m.audit_events(
        AuditQuery(
            event_type=event_type,
            since=start,
            until=end,
            key_id=key_id,
            anchor_id=aid,
            ceremony_id=ceremony_id,
        )
    )
    events.reverse()
    if limit is not None:
        events = events[:limit]
    if as_json:
        emit_json([e.to_dict() for e in events])
        return
    table(
        ["Timestamp", "Event", "Key", "Anchor", "Actor", "Details"],
        [
            [
                format_time(e.timestamp),
                e.event_type,
                e.key_id or "-",
                str(e.anchor_id) if e.anchor_id else "-",
                e.actor,
                json.dumps(dict(e.details), sort_keys=True, separators=(",", ":")),
            ]
            for e in events
        ],
    )


@audit.command("verify")
@click.option("--expect-head", help="Head hash recorded earlier: detects a truncated log.")
@click.option(
    "--chain-only",
    is_flag=True,
    help="Check the hash chain only; skip replaying the events against the tables.",
)
@json_option
def verify(expect_head: str | None, chain_only: bool, as_json: bool) -> None:
    """Check every hash and link of the audit chain, then replay the events into the keys,
    anchors, key history and ceremony states they imply and compare with the tables, and
    check that every protected change names the ceremony that authorised it."""
    from stellakeys.audit_replay import audit_store

    # One streamed pass over the log for the chain, the replay and the dual-control check.
    result, findings = audit_store(
        manager().store, expect_head, check_state=not chain_only, check_ceremonies=True
    )
    if as_json:
        emit_json(
            {
                "ok": result.ok and not findings,
                "events": result.count,
                "head": result.head_hash,
                "brokenAt": result.broken_at,
                "reason": result.reason,
                "stateChecked": result.state_checked,
                "stateDifferences": list(result.state_differences),
                "unauthorised": [f.to_dict() for f in findings],
            }
        )
    else:
        if result.reason:
            where = f" at event #{result.broken_at}" if result.broken_at is not None else ""
            click.echo(f"BROKEN{where}: {result.reason} ({result.count} events verified before it)")
        if result.state_differences:
            click.echo(
                f"STATE DIFFERS: {len(result.state_differences)} difference(s) between the"
                f" tables and the {result.count} audit events (changed outside stellakeys?)"
            )
            for line in result.state_differences:
                click.echo(f"  {line}")
        for f in findings:
            click.echo(f"UNAUTHORISED event #{f.seq} ({f.event_type}): {f.reason}")
        if result.ok and not findings:
            checked = ", tables match the replayed events" if result.state_checked else ""
            click.echo(f"OK: {result.count} events, head {result.head_hash}{checked}")
    if not result.ok or findings:
        raise SystemExit(1)

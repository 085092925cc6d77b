"""``stellaops doctor``: find (and with ``--repair`` fix) what a crash between the key store
and the database can leave behind: unfinished key intents, orphan keys, stale temp files."""

from __future__ import annotations

import click

from stellakeys_cli.context import emit_json, json_option, manager, table


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Finish unfinished intents, set orphan keys aside (kept, never deleted), remove "
    "stale temp files.",
)
@click.option(
    "--tmp-min-age",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a key store temp file must be old to count as stale (a live write's is younger).",
)
@json_option
def doctor(repair: bool, tmp_min_age: float, as_json: bool) -> None:
    """List unfinished key intents, orphan keys and stale temp files; --repair fixes them.

    Exit 0 when nothing is found (or everything was repaired), 1 otherwise."""
    from stellakeys.key_lifecycle import diagnose
    from stellakeys.key_lifecycle import repair as do_repair

    mgr = manager()
    result = diagnose(mgr, tmp_min_age_seconds=tmp_min_age)
    if repair and not result.clean:
        result = do_repair(mgr, result)
    if as_json:
        emit_json(result.to_dict())
    elif result.clean:
        click.echo("doctor: nothing to repair")
    else:
        table(
            ["Kind", "Key ID", "Key Store", "Detail"] + (["Repair"] if repair else []),
            [
                [f.kind, f.key_id or "-", f.store, f.detail]
                + ([f.repaired or "-"] if repair else [])
                for f in result.findings
            ],
        )
    unrepaired = [
        f for f in result.findings if not repair or (f.repaired or "").startswith("not repaired")
    ]
    if unrepaired:
        raise SystemExit(1)

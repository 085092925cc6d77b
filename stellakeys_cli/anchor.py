"""``stellaops anchor ...``"""

from __future__ import annotations

from pathlib import Path

import click

from stellakeys_cli.context import (
    emit_json,
    json_option,
    manager,
    parse_time_option,
    split_list,
    table,
)
from stellakeys_cli.params import KEY_ID
from stellakeys_cli.remote import remote_options


@click.group()
def anchor() -> None:
    """Manage trust anchors and their keys."""


@anchor.command("create")
@click.option("--purl-pattern", required=True, help="e.g. 'pkg:npm/*' or '*'.")
@click.option("--key-ids", required=True, help="Comma-separated key ids.")
@click.option("--predicate-types", required=True, help="Comma-separated predicate types.")
@click.option("--policy-version", default="v1", show_default=True)
@json_option
def create(
    purl_pattern: str, key_ids: str, predicate_types: str, policy_version: str, as_json: bool
) -> None:
    """Create a trust anchor."""
    # An anchor with no key or no predicate type verifies nothing, yet blocks its pattern for
    # a later, correct anchor (issue 17): refuse it before anything is written.
    keys, types = split_list(key_ids), split_list(predicate_types)
    if not keys:
        raise click.UsageError(
            f"--key-ids {key_ids!r} names no key: give at least one key id (see `key list`)"
        )
    if not types:
        raise click.UsageError(
            f"--predicate-types {predicate_types!r} names no predicate type: an anchor without"
            " one can never verify anything; give e.g. https://slsa.dev/provenance/v1"
        )
    m = manager()
    created = m.create_anchor(purl_pattern, keys, types, policy_version)
    if as_json:
        emit_json(created.to_dict(m.clock.now()))
        return
    click.echo(f"Created trust anchor {created.anchor_id} for {created.purl_pattern}")


@anchor.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include inactive anchors.")
@json_option
def list_(include_inactive: bool, as_json: bool) -> None:
    """List trust anchors."""
    m = manager()
    now = m.clock.now()
    anchors = m.list_anchors(active_only=not include_inactive)
    if as_json:
        emit_json([a.to_dict(now) for a in anchors])
        return
    table(
        ["ID", "Pattern", "Keys", "Status"],
        [
            [
                str(a.anchor_id),
                a.purl_pattern,
                ",".join(a.allowed_keyids(now)) or "-",
                "active" if a.active else "inactive",
            ]
            for a in anchors
        ],
    )


@anchor.command("status")
@click.option("--anchor-id", required=True)
@json_option
def status(anchor_id: str, as_json: bool) -> None:
    """Active keys and how the anchor's stored proofs verify."""
    result = manager().anchor_status(anchor_id)
    if as_json:
        emit_json(result.to_dict())
        return
    rate = result.success_rate
    click.echo(f"Anchor: {result.anchor.anchor_id}")
    click.echo(f"Pattern: {result.anchor.purl_pattern}")
    click.echo(f"Status: {'active' if result.anchor.active else 'inactive'}")
    click.echo(f"Active Keys: {', '.join(result.anchor.allowed_keyids(result.at)) or '-'}")
    revoked = result.anchor.revoked_keys(result.at)
    if revoked:
        click.echo(f"Revoked Keys: {', '.join(revoked)}")
    click.echo(
        "Verification Success Rate: "
        + (f"{rate:.0%}" if rate is not None else "n/a (no proofs)")
        + (f" ({result.proofs_verified}/{result.proofs_total})" if result.proofs_total else "")
    )
    click.echo(f"Pending Rescans: {result.pending_rescans}")


@anchor.command("add-key")
@click.option("--anchor-id", required=True, help="Anchor UUID, or ALL for every active anchor.")
@click.option("--key-id", required=True, type=KEY_ID)
@json_option
@remote_options
def add_key(
    anchor_id: str, key_id: str, as_json: bool, server: str | None, token_file: Path | None
) -> None:
    """Add a key to an anchor (the old keys stay)."""
    if server:
        from stellakeys_cli import remote

        done = remote.anchor_add_key(remote.Remote.open(server, token_file), anchor_id, key_id)
        if as_json:
            emit_json(done)
        for a in [] if as_json else done.get("anchorIds", []):
            click.echo(f"Added {key_id} to anchor {a}")
        return
    changed = manager().add_key(anchor_id, key_id)
    if as_json:
        emit_json({"keyId": key_id, "anchors": [str(a) for a in changed]})
        return
    if not changed:
        click.echo(f"Key {key_id} was already in every active anchor")
    for a in changed:
        click.echo(f"Added {key_id} to anchor {a}")


@anchor.command("revoke-key")
@click.option("--anchor-id", required=True, help="Anchor UUID, or ALL for every anchor.")
@click.option("--key-id", required=True, type=KEY_ID)
@click.option(
    "--reason",
    required=True,
    help="One of: annual-rotation, rotation, superseded, cessation-of-operation,"
    " affiliation-changed, privilege-withdrawn, unspecified, compromise (RFC 5280 names such"
    " as keyCompromise also work).",
)
@click.option(
    "--effective-at", default="NOW", show_default=True, help="ISO 8601 time, past or future."
)
@json_option
@remote_options
def revoke_key(
    anchor_id: str,
    key_id: str,
    reason: str,
    effective_at: str,
    as_json: bool,
    server: str | None,
    token_file: Path | None,
) -> None:
    """Revoke a key; proofs signed before the effective time keep verifying.

    A revocation is only ever made earlier or stronger; compromise is recorded in every
    anchor that holds the key."""
    from stellakeys.errors import UnknownRevocationReasonError
    from stellakeys.revocation import parse_reason

    try:
        parsed = parse_reason(reason)
    except UnknownRevocationReasonError as exc:
        raise click.ClickException(f"--reason: {exc}") from None
    if server:
        from stellakeys_cli import remote

        r = remote.Remote.open(server, token_file)
        done = remote.anchor_revoke_key(r, anchor_id, key_id, parsed.value, effective_at)
        if as_json:
            emit_json(done)
        for a in [] if as_json else done.get("anchorIds", []):
            click.echo(f"Revoked {key_id} in anchor {a} effective {done.get('effectiveAt')}")
        return
    m = manager()
    when = parse_time_option(effective_at, allow_now=True)
    changed = m.revoke_key(anchor_id, key_id, parsed, when)
    from stellakeys.times import format_time

    # What is stored can differ from what was asked: an earlier time or a stronger reason
    # already recorded wins.
    entries = [(a, m.get_anchor(a).entry(key_id)) for a in changed]
    if as_json:
        emit_json(
            {
                "keyId": key_id,
                "reason": parsed.value,
                "effectiveAt": format_time(when),
                "anchors": [str(a) for a in changed],
                "revocations": [
                    {
                        "anchorId": str(a),
                        "revokedAt": format_time(e.revoked_at),
                        "revokeReason": e.revoke_reason,
                    }
                    for a, e in entries
                    if e is not None and e.revoked_at is not None
                ],
            }
        )
        return
    for a, e in entries:
        if e is not None and e.revoked_at is not None:
            click.echo(
                f"Revoked {key_id} in anchor {a} effective {format_time(e.revoked_at)}"
                f" ({e.revoke_reason})"
            )
    if not changed:
        click.echo(f"Key {key_id} was already revoked in every anchor holding it")


@anchor.command("deactivate")
@click.option("--anchor-id", required=True)
@json_option
def deactivate(anchor_id: str, as_json: bool) -> None:
    """Deactivate an anchor (anchors are never deleted)."""
    m = manager()
    done = m.deactivate_anchor(anchor_id)
    if as_json:
        emit_json(done.to_dict(m.clock.now()))
        return
    click.echo(f"Deactivated trust anchor {done.anchor_id}")


@anchor.command("export")
@click.option("--anchor-id", required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jwks", "pem"]),
    default="jwks",
    show_default=True,
    help="RFC 7517 JWK Set, or PEM public keys with '#' comment lines.",
)
@click.option("--at-time", help="Keys trusted at this ISO 8601 time (default: now).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
def export(anchor_id: str, fmt: str, at_time: str | None, output: str | None) -> None:
    """Export the anchor's currently trusted keys for other verifiers (docs/interop.md)."""
    import json
    from pathlib import Path

    from stellakeys.jwk import anchor_jwks, anchor_pem

    m = manager()
    at = parse_time_option(at_time) or m.clock.now()
    found = m.get_anchor(anchor_id)
    if fmt == "jwks":
        text = json.dumps(anchor_jwks(found, at), indent=2, ensure_ascii=False) + "\n"
    else:
        text = anchor_pem(found, at)
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")

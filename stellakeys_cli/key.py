"""``stellaops key ...``"""

from __future__ import annotations

from pathlib import Path

import click

from stellakeys_cli.context import emit_json, json_option, manager, parse_time_option, table
from stellakeys_cli.params import KEY_ID
from stellakeys_cli.remote import remote_options


@click.group()
def key() -> None:
    """Generate, import and inspect signing keys."""


@key.command("generate")
@click.option("--profile", default="default", show_default=True, help="Profile in signer.yaml.")
@click.option("--key-id", required=True, type=KEY_ID, help="Identifier for the new key.")
@click.option("--algorithm", help="Must match the profile's algorithm if given.")
@json_option
@remote_options
def generate(
    profile: str,
    key_id: str,
    algorithm: str | None,
    as_json: bool,
    server: str | None,
    token_file: Path | None,
) -> None:
    """Generate a key in the profile's key store (--server: in the service's)."""
    if server:
        from stellakeys_cli import remote

        made = remote.key_generate(
            remote.Remote.open(server, token_file), profile, key_id, algorithm
        )
        if as_json:
            emit_json(made)
        else:
            click.echo(f"Generated {made.get('keyId')} ({made.get('algorithm')}) via {server}")
            click.echo(f"Fingerprint: {made.get('fingerprint')}")
        return
    record = manager().generate_key(key_id, profile=profile, algorithm=algorithm)
    if as_json:
        emit_json(record.to_dict())
        return
    click.echo(f"Generated {record.key_id} ({record.algorithm}) in {record.key_store_uri}")
    click.echo(f"Fingerprint: {record.fingerprint}")


@key.command("import")
@click.option("--key-id", required=True, type=KEY_ID)
@click.option(
    "--public-key",
    "public_key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM SubjectPublicKeyInfo file ('-' not accepted).",
)
@click.option("--profile", help="Profile whose rotation policy applies, if any.")
@json_option
def import_(key_id: str, public_key_file: Path, profile: str | None, as_json: bool) -> None:
    """Import an external public key (verification only)."""
    record = manager().import_key(key_id, public_key_file.read_text("ascii"), profile)
    if as_json:
        emit_json(record.to_dict())
        return
    click.echo(f"Imported {record.key_id} ({record.algorithm}) {record.fingerprint}")


@key.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List keys."""
    records = manager().list_keys()
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    table(
        ["Key ID", "Algorithm", "Profile", "Created", "Fingerprint"],
        [
            [
                r.key_id,
                r.algorithm,
                r.profile or "-",
                r.created_at.strftime("%Y-%m-%d"),
                r.fingerprint[:23] + "...",
            ]
            for r in records
        ],
    )


@key.command("check-validity")
@click.option("--key-id", required=True, type=KEY_ID)
@click.option("--at-time", help="ISO 8601 time (default: now).")
@json_option
def check_validity(key_id: str, at_time: str | None, as_json: bool) -> None:
    """Was the key valid at a time, in each anchor holding it?"""
    result = manager().check_validity(key_id, parse_time_option(at_time))
    if as_json:
        emit_json(result.to_dict())
    else:
        from stellakeys.times import format_time

        verdict = "VALID" if result.valid else "NOT VALID"
        click.echo(f"Key {key_id} at {format_time(result.at)}: {verdict}")
        for row in result.anchors:
            e = row.entry
            window = f"added {format_time(e.added_at)}"
            if e.revoked_at:
                window += f", revoked {format_time(e.revoked_at)} ({e.revoke_reason})"
            if e.expires_at:
                window += f", expires {format_time(e.expires_at)}"
            mark = "valid" if row.valid else "not valid"
            click.echo(f"  {row.anchor_id} {row.purl_pattern}: {mark}; {window}")
        if not result.anchors:
            click.echo("  (the key is in no trust anchor)")
    if not result.valid:
        raise SystemExit(1)


@key.command("rotation-warnings")
@click.option("--at-time", help="Evaluate as of this time (default: now).")
@json_option
def rotation_warnings(at_time: str | None, as_json: bool) -> None:
    """Key age against each profile's rotation policy."""
    rows = manager().rotation_warnings(parse_time_option(at_time))
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    table(
        ["Key ID", "Profile", "Age", "Max Age", "Warning"],
        [
            [r.key_id, r.profile, f"{r.age_months}mo", f"{r.max_age_months}mo", r.message]
            for r in rows
        ],
    )

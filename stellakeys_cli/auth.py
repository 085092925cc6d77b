"""``stella auth keys list|info``: approver keys, as approvers.yaml registers them and as this
home can use them (the runbook's "Signature Verification Failures" checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.context import emit_json, json_option, table
from stellakeys_cli.params import KEY_ID

if TYPE_CHECKING:
    from stellakeys.ceremony.approvers import ApproverKey, ApproverRegistry
    from stellakeys.keys import KeyRecord


@click.group()
def auth() -> None:
    """Approver identities, scopes and signing keys."""


@auth.group()
def keys() -> None:
    """Approval keys registered in approvers.yaml, and which of them this home holds."""


def _local_by_fingerprint() -> dict[str, KeyRecord]:
    from stellakeys_cli.context import manager

    return {r.fingerprint: r for r in manager().list_keys()}


def _describe(
    registry: ApproverRegistry,
    identity: str,
    key: ApproverKey,
    local: dict[str, KeyRecord],
    me: str,
) -> dict[str, Any]:
    record = local.get(key.fingerprint)
    return {
        "keyId": key.key_id,
        "approver": identity,
        "algorithm": key.algorithm,
        "fingerprint": key.fingerprint,
        "scopes": sorted(registry.scopes_of(identity)),
        "groups": [
            {"name": g.name, "operations": list(g.operations)} for g in registry.groups_of(identity)
        ],
        "localKeyId": record.key_id if record else None,
        "canSign": bool(record and record.key_store_uri),
        "isActor": identity == me,
    }


@keys.command("list")
@json_option
def list_(as_json: bool) -> None:
    """Every registered approver key; the actor's own are marked with '*'."""
    from stellakeys_cli.ceremony import service

    svc = service()
    registry = svc.approvers
    local = _local_by_fingerprint()
    me = svc.manager.actor
    rows = [
        _describe(registry, identity, key, local, me)
        for identity in registry.identities()
        for key in registry.keys_of(identity)
    ]
    if as_json:
        emit_json({"actor": svc.actor(me).to_dict(), "keys": rows})
        return
    click.echo(f"Actor: {me} (scopes: {', '.join(sorted(registry.scopes_of(me))) or 'none'})")
    table(
        ["", "Key ID", "Approver", "Algorithm", "Fingerprint", "Local Key", "Can Sign"],
        [
            [
                "*" if r["isActor"] else "",
                r["keyId"],
                r["approver"],
                r["algorithm"],
                r["fingerprint"][:23] + "...",
                r["localKeyId"] or "-",
                "yes" if r["canSign"] else "no",
            ]
            for r in rows
        ],
    )


@keys.command("info")
@click.option(
    "--key-id", required=True, type=KEY_ID, help="A registered keyId, or a key id of this home."
)
@json_option
def info(key_id: str, as_json: bool) -> None:
    """One key: whom it is registered for, their groups and scopes, whether it can sign here."""
    from stellakeys.errors import NotFoundError
    from stellakeys_cli.ceremony import service

    svc = service()
    registry = svc.approvers
    local = _local_by_fingerprint()
    found = registry.find_key(key_id)
    if found is None:
        record = next((r for r in local.values() if r.key_id == key_id), None)
        if record is not None:
            found = registry.find_fingerprint(record.fingerprint)
        if found is None:
            raise NotFoundError(
                f"key {key_id!r} is not registered for any approver in approvers.yaml"
                + (" (it exists in this home)" if record is not None else "")
            )
    identity, key = found
    row = _describe(registry, identity, key, local, svc.manager.actor)
    if as_json:
        emit_json({**row, "publicKey": key.public_key_pem})
        return
    for label, name in (
        ("Key ID", "keyId"),
        ("Approver", "approver"),
        ("Algorithm", "algorithm"),
        ("Fingerprint", "fingerprint"),
        ("Local key", "localKeyId"),
    ):
        click.echo(f"{label + ':':13}{row[name] or '-'}")
    click.echo(f"{'Can sign:':13}{'yes' if row['canSign'] else 'no (not held by this home)'}")
    click.echo(f"{'Scopes:':13}{', '.join(row['scopes']) or 'none'}")
    for group in row["groups"]:
        click.echo(f"{'Group:':13}{group['name']} ({', '.join(group['operations'])})")

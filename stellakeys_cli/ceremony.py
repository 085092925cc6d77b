"""``stella ceremony ...``: the dual-control runbook's commands.

create, approve, reject, execute, cancel and status print the runbook's JSON responses; list
prints a table (``--json`` for JSON). The acting identity is ``--actor`` (or
``STELLAKEYS_ACTOR``), with the scopes approvers.yaml gives it; an approval with ``--sign`` is
signed by one of this home's keys whose public key approvers.yaml registers for that identity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stellakeys_cli.context import emit_json, json_option, manager, split_list, table
from stellakeys_cli.params import KEY_ID
from stellakeys_cli.remote import remote_options

if TYPE_CHECKING:
    from stellakeys.ceremony.actor import Actor
    from stellakeys.ceremony.model import Decision
    from stellakeys.ceremony.service import CeremonyService
    from stellakeys.dsse import Envelope

_TYPES = (
    "key-rotation",
    "trust-anchor-update",
    "key-revocation",
    "hsm-key-generation",
    "recovery-key-activation",
    "ceremony-policy-update",
)


def service() -> CeremonyService:
    from stellakeys.ceremony.service import CeremonyService

    m = manager()
    assert m.settings is not None
    return CeremonyService.from_settings(m, m.settings)


def actor(svc: CeremonyService) -> Actor:
    return svc.actor(svc.operations.actor)


def _payload(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    return value


def _out(as_json: bool, body: dict[str, Any], title: str) -> None:
    """JSON with --json; otherwise a title and one aligned ``Field: value`` line per field
    (issue 17: human output by default, like every other command)."""
    if as_json:
        emit_json(body)
        return
    click.echo(title)
    fields = [(k, v) for k, v in body.items() if k != "ceremonyId" and v not in (None, [], {})]
    width = max((len(k) for k, _ in fields), default=0) + 1
    for name, value in fields:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            text = ", ".join(value)
        elif isinstance(value, dict | list):
            text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        click.echo(f"  {name + ':':<{width}} {text}")


@click.group()
def ceremony() -> None:
    """Dual-control (M-of-N) ceremonies for protected key operations."""


@ceremony.command("create")
@click.option("--type", "ceremony_type", required=True, type=click.Choice(_TYPES))
@click.option("--subject", required=True, help="What the ceremony is for, for approvers.")
@click.option("--threshold", type=click.IntRange(min=1), help="Approvals needed (M).")
@click.option(
    "--required-approvers", type=click.IntRange(min=1), help="Eligible approvers needed (N)."
)
@click.option("--expires-in", help="Timeout, e.g. 24h (default: ceremonies.defaultTimeout).")
@click.option("--expires-at", help="Expiry as ISO 8601 (instead of --expires-in).")
@click.option("--payload", "payload_text", required=True, help="JSON object, or @file with one.")
@json_option
@remote_options
def create(
    ceremony_type: str,
    subject: str,
    threshold: int | None,
    required_approvers: int | None,
    expires_in: str | None,
    expires_at: str | None,
    payload_text: str,
    as_json: bool,
    server: str | None,
    token_file: Path | None,
) -> None:
    """Start a ceremony; eligible approvers are notified."""
    from stellakeys.times import parse_duration, parse_time

    if server:
        from stellakeys_cli import remote

        body = remote.ceremony_create(
            remote.Remote.open(server, token_file),
            ceremony_type,
            subject,
            _payload(payload_text),
            threshold,
            required_approvers,
            expires_in,
            expires_at,
        )
        _out(as_json, body, f"Created ceremony {body.get('ceremonyId', '')}")
        return
    svc = service()
    created = svc.create(
        actor(svc),
        ceremony_type,
        subject,
        _payload(payload_text),
        threshold=threshold,
        required_approvers=required_approvers,
        expires_in=parse_duration(expires_in) if expires_in else None,
        expires_at=parse_time(expires_at) if expires_at else None,
    )
    _out(as_json, created.create_response(), f"Created ceremony {created.ceremony_id}")


def _local_signing_key(svc: CeremonyService, identity: str, key_id: str | None) -> str:
    """The id of a key in this home that can sign for ``identity``."""
    registered = {k.fingerprint: k for k in svc.approvers.keys_of(identity)}
    m = manager()
    if key_id is not None:
        record = m.get_key(key_id)
        if record.fingerprint not in registered:
            # Still submitted (and audited as rejected) by the service; say why up front too.
            click.echo(
                f"warning: key {key_id} is not registered for {identity} in approvers.yaml",
                err=True,
            )
        return key_id
    for record in m.list_keys():
        if record.key_store_uri is not None and record.fingerprint in registered:
            return record.key_id
    raise click.UsageError(
        f"this home holds no signing key registered for {identity}: pass --key-id, or"
        " register a key (stella auth keys list shows the registered ones)"
    )


def _decide(
    decision: Decision,
    ceremony_id: str,
    reason: str,
    sign: bool,
    key_id: str | None,
    envelope_file: Path | None,
    as_json: bool = True,
) -> None:
    from stellakeys.ceremony.statement import PAYLOAD_TYPE
    from stellakeys.dsse import Envelope

    svc = service()
    who = actor(svc)
    envelope: Envelope | None = None
    if envelope_file is not None:
        envelope = Envelope.from_json(envelope_file.read_bytes())
    elif sign or key_id is not None:
        signing_key = _local_signing_key(svc, who.identity, key_id)
        statement = svc.statement(ceremony_id, who.identity, decision, reason)
        m = manager()
        digest = m.sign(statement.to_json(), [signing_key], payload_type=PAYLOAD_TYPE)
        envelope = m.get_proof(digest)
    if decision.value == "approve":
        updated, approval = svc.approve(who, ceremony_id, envelope, reason=reason)
    else:
        updated, approval = svc.reject(who, ceremony_id, envelope, reason=reason)
    verb = "Approved" if decision.value == "approve" else "Rejected"
    _out(as_json, updated.approval_response(approval), f"{verb} ceremony {ceremony_id}")


_sign_options = [
    click.option("--ceremony-id", required=True),
    click.option("--reason", required=True, help="Why: recorded, signed and audited."),
    click.option("--sign", is_flag=True, help="Sign the approval statement (DSSE) with your key."),
    click.option(
        "--key-id", type=KEY_ID, help="This home's key to sign with (default: your registered one)."
    ),
    click.option(
        "--envelope",
        "envelope_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A statement signed elsewhere (see 'ceremony statement').",
    ),
]


def _with_sign_options(f: Any) -> Any:
    for option in reversed(_sign_options):
        f = option(f)
    return f


@ceremony.command("approve")
@_with_sign_options
@json_option
@remote_options
def approve(
    ceremony_id: str,
    reason: str,
    sign: bool,
    key_id: str | None,
    envelope_file: Path | None,
    as_json: bool,
    server: str | None,
    token_file: Path | None,
) -> None:
    """Approve a ceremony (--sign: a DSSE-signed approval statement)."""
    from stellakeys.ceremony.model import Decision

    if server:
        from stellakeys_cli import remote

        r = remote.Remote.open(server, token_file)
        _out(
            as_json,
            remote.ceremony_approve(
                r, ceremony_id, reason, sign=sign, key_id=key_id, envelope_file=envelope_file
            ),
            f"Approved ceremony {ceremony_id}",
        )
        return
    _decide(Decision.APPROVE, ceremony_id, reason, sign, key_id, envelope_file, as_json)


@ceremony.command("reject")
@_with_sign_options
@json_option
def reject(
    ceremony_id: str,
    reason: str,
    sign: bool,
    key_id: str | None,
    envelope_file: Path | None,
    as_json: bool,
) -> None:
    """Refuse to approve (recorded as your one decision; changes no state)."""
    from stellakeys.ceremony.model import Decision

    _decide(Decision.REJECT, ceremony_id, reason, sign, key_id, envelope_file, as_json)


@ceremony.command("statement")
@click.option("--ceremony-id", required=True)
@click.option("--decision", type=click.Choice(["approve", "reject"]), default="approve")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: the output is JSON.")
def statement(ceremony_id: str, decision: str, reason: str, as_json: bool) -> None:
    """Print the approval statement to sign with another tool (payloadType
    application/vnd.stellakeys.ceremony-approval+json), for --envelope."""
    from stellakeys.ceremony.model import Decision

    svc = service()
    st = svc.statement(ceremony_id, actor(svc).identity, Decision.parse(decision), reason)
    click.echo(st.to_json().decode("utf-8"))


@ceremony.command("execute")
@click.option("--ceremony-id", required=True)
@json_option
@remote_options
def execute(ceremony_id: str, as_json: bool, server: str | None, token_file: Path | None) -> None:
    """Run an Approved ceremony's operation (exactly once)."""
    if server:
        from stellakeys_cli import remote

        body = remote.ceremony_execute(remote.Remote.open(server, token_file), ceremony_id)
        _out(as_json, body, f"Executed ceremony {ceremony_id}")
        return
    svc = service()
    done = svc.execute(actor(svc), ceremony_id)
    _out(as_json, done.execution_response(), f"Executed ceremony {ceremony_id}")


@ceremony.command("list")
@click.option("--state", "states", help="Comma-separated, e.g. pending,partially-approved.")
@json_option
@remote_options
def list_(states: str | None, as_json: bool, server: str | None, token_file: Path | None) -> None:
    """List ceremonies (expired ones are marked so as they are read)."""
    from stellakeys.ceremony.model import states_of
    from stellakeys.times import format_time

    if server:
        from stellakeys_cli import remote

        rows = remote.ceremony_list(remote.Remote.open(server, token_file), states)
        if as_json:
            emit_json(rows)
        else:
            remote.ceremony_table(rows)
        return
    wanted = states_of(split_list(states)) if states else None
    found = service().list(wanted)
    if as_json:
        emit_json([c.to_dict() for c in found])
        return
    table(
        ["Ceremony ID", "Type", "State", "Approvals", "Expires", "Initiator", "Subject"],
        [
            [
                c.ceremony_id,
                c.type,
                c.state.value,
                f"{c.current_approvals}/{c.threshold}",
                format_time(c.expires_at),
                c.initiator,
                c.subject,
            ]
            for c in found
        ],
    )


@ceremony.command("status")
@click.option("--ceremony-id", required=True)
@json_option
@remote_options
def status(ceremony_id: str, as_json: bool, server: str | None, token_file: Path | None) -> None:
    """One ceremony: state, payload, approvals, result."""
    if server:
        from stellakeys_cli import remote

        body = remote.ceremony_status(remote.Remote.open(server, token_file), ceremony_id)
        _out(as_json, body, f"Ceremony {ceremony_id}")
        return
    _out(as_json, service().get(ceremony_id).to_dict(), f"Ceremony {ceremony_id}")


@ceremony.command("cancel")
@click.option("--ceremony-id", required=True)
@click.option("--reason", required=True)
@json_option
@remote_options
def cancel(
    ceremony_id: str, reason: str, as_json: bool, server: str | None, token_file: Path | None
) -> None:
    """Cancel before execution (initiator, or the ceremony:cancel scope)."""
    from stellakeys.times import format_time

    if server:
        from stellakeys_cli import remote

        r = remote.Remote.open(server, token_file)
        _out(
            as_json,
            remote.ceremony_cancel(r, ceremony_id, reason),
            f"Cancelled ceremony {ceremony_id}",
        )
        return
    svc = service()
    done = svc.cancel(actor(svc), ceremony_id, reason)
    body = {
        "ceremonyId": done.ceremony_id,
        "state": done.state.value,
        "cancelledAt": format_time(done.cancelled_at) if done.cancelled_at else None,
        "cancelReason": done.cancel_reason,
    }
    _out(as_json, body, f"Cancelled ceremony {done.ceremony_id}")


@ceremony.command("sweep")
@json_option
def sweep(as_json: bool) -> None:
    """Expire overdue ceremonies and send the 75%/90% reminders (run it from cron)."""
    report = service().sweep()
    if as_json:
        emit_json(
            {
                "expired": list(report.expired),
                "reminders": [{"ceremonyId": c, "reminder": m} for c, m in report.reminders],
            }
        )
        return
    click.echo(f"Swept: {len(report.expired)} expired, {len(report.reminders)} reminder(s) sent")
    for cid in report.expired:
        click.echo(f"  expired   {cid}")
    for cid, which in report.reminders:
        click.echo(f"  reminder  {cid} ({which})")


@ceremony.command("policy")
@json_option
def policy(as_json: bool) -> None:
    """Show the store's recorded dual-control policy and the one in force for this process
    (the store's, made stricter by this configuration). To weaken the store's policy, create
    a ceremony-policy-update ceremony with --payload '{"policy": {...}}'."""
    from stellakeys.ceremony.policy_store import stored_policy

    svc = service()
    with manager().store.read() as tx:
        folded = stored_policy(tx)
        in_force = svc.policy(tx)
    body = {
        "storeVersion": folded.version,
        "store": folded.policy.to_dict() if folded.policy is not None else None,
        "inForce": in_force.to_dict(),
        "inForceDigest": in_force.digest,
        "disregardedVersions": [{"version": v, "reason": r} for v, r in folded.disregarded],
    }
    if as_json:
        emit_json(body)
        return
    if folded.policy is None:
        click.echo("store: no dual-control policy recorded (stellaops db migrate records one)")
    else:
        click.echo(f"store: policy version {folded.version} ({folded.policy.digest})")
    protected = ", ".join(sorted(in_force.protected)) or "none"
    click.echo(f"in force: protected operations: {protected}")
    click.echo(
        f"  signed approvals required: {in_force.require_signed_approvals};"
        f" self-approval allowed: {in_force.allow_self_approval}"
    )
    for v, reason in folded.disregarded:
        click.echo(f"  WARNING: version {v} disregarded: {reason}")

"""The CLI as a client of the signer service (``--server URL`` / ``STELLAKEYS_SERVER``).

With a server, ``ceremony create|approve|list|status|execute|cancel``, ``key generate`` and
``anchor add-key|revoke-key`` open no store: they call the service's HTTP API with a bearer
token from ``STELLAKEYS_TOKEN`` or ``--token-file``. The service authenticates the token and
decides as the library would (scopes, dual control, approval signatures); the identity it
records is the token's, so ``--actor`` plays no part here.

``ceremony approve --sign`` fetches the approval statement from the service, signs it with a
key of the approver's own home (their key never leaves it) and posts the DSSE envelope: an
approver needs a token and a key, never database credentials.

Errors from the service (RFC 9457 problem+json) become one line naming the fix.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import click

SERVER_ENV = "STELLAKEYS_SERVER"
TOKEN_ENV = "STELLAKEYS_TOKEN"  # noqa: S105 (the variable's name, not a secret)
#: A token is a JWT or similar: printable ASCII without spaces (so it cannot split a header).
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))
_TIMEOUT_SECONDS = 60.0

#: What to do about each kind of refusal (problem ``type`` suffix), for the one-line error.
_FIXES = {
    "unauthenticated": f"get a fresh access token ({TOKEN_ENV} or --token-file)",
    "missing-scope": "ask your identity provider's administrator for the {scope} scope",
    "forbidden": "this identity may not do this; ask someone who may",
    "approval-rejected": "check that you sign with a key approvers.yaml registers for you"
    " ('stellaops auth keys list' on the service's host shows them)",
    "policy-refused": "dual control is on: create a ceremony for this operation"
    " ('stellaops ceremony create --server ...')",
    "not-found": "check the id ('list' shows the existing ones)",
    "conflict": "check the current state ('status' / 'list')",
    "ceremony-executed": "nothing to do: its operation ran once ('status' shows the result)",
    "too-large": "send a smaller body",
    "internal": "see the service's log",
}


class ClientUsageError(click.ClickException):
    """A bad ``--server`` / token setup: one line (no usage banner), exit 2 like usage errors."""

    exit_code = 2


def remote_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--server`` and ``--token-file`` for a command that can run against the service."""
    f = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"File holding the bearer token (mode 600), instead of ${TOKEN_ENV}.",
    )(f)
    return click.option(
        "--server",
        envvar=SERVER_ENV,
        metavar="URL",
        help=f"Talk to the signer service at URL instead of opening a store (${SERVER_ENV}).",
    )(f)


def read_token(token_file: Path | None) -> str:
    """The bearer token: from ``--token-file`` (refused if group/world readable), else the
    environment."""
    if token_file is not None:
        try:
            st = token_file.stat()
        except OSError as exc:
            raise ClientUsageError(f"--token-file {token_file}: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ClientUsageError(
                f"--token-file {token_file} is readable by others (mode"
                f" {stat.S_IMODE(st.st_mode):o}): run 'chmod 600 {token_file}'"
            )
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientUsageError(f"--token-file {token_file}: cannot read it: {exc}") from None
        where = f"--token-file {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
        if not token:
            raise ClientUsageError(
                f"--server needs a bearer token: set {TOKEN_ENV} or pass --token-file"
            )
    if not token or not set(token) <= _TOKEN_CHARS:
        raise ClientUsageError(f"{where}: not a bearer token (empty, or spaces/control bytes)")
    return token


def check_url(url: str) -> str:
    """``https://`` -- or ``http://`` to a loopback address: a bearer token must not cross a
    network in clear text."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientUsageError(f"--server {url!r}: give an http(s) URL, e.g. https://signer:8443")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ClientUsageError(
            f"--server {url}: use https:// (a bearer token must not travel in clear text;"
            " plain http is accepted for loopback addresses only)"
        )
    return url.rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Remote:
    """One service and one token for the command."""

    def __init__(self, server: str, token: str) -> None:
        self.url = check_url(server)
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    @classmethod
    def open(cls, server: str, token_file: Path | None) -> Remote:
        return cls(server, read_token(token_file))

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        import httpx

        content = json.dumps(body).encode("utf-8") if body is not None else None
        headers = dict(self._headers)
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            with httpx.Client(base_url=self.url, timeout=_TIMEOUT_SECONDS) as client:
                r = client.request(method, path, content=content, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"cannot reach the signer service at {self.url}: {exc}"
                f" (check --server / {SERVER_ENV} and that 'stellaops serve' runs)"
            ) from None
        if r.status_code >= 400:
            raise click.ClickException(problem_line(method, path, r.status_code, r))
        try:
            return r.json()
        except ValueError:
            raise click.ClickException(
                f"the signer service at {self.url} answered {method} {path} with non-JSON"
                " (is --server the signer service?)"
            ) from None


def problem_line(method: str, path: str, status: int, response: Any) -> str:
    """One line from an RFC 9457 problem: what was refused, why, and the fix."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return f"the signer service refused {method} {path} with HTTP {status}"
    kind = str(problem.get("type", "")).rsplit("/", 1)[-1] or "error"
    detail = " ".join(str(problem.get("detail", "")).split())[:400]
    fix = _FIXES.get(kind)
    if fix is None and kind.startswith(("invalid", "unknown", "duplicate")):
        field = problem.get("field")
        fix = f"correct {field!r}" if field else "correct the input"
    line = f"the signer service refused {method} {path} ({status} {kind}): {detail}"
    if fix:
        line += f"; {fix.format(scope=problem.get('scope', 'needed'))}"
    return line


def _seg(value: str) -> str:
    return quote(value, safe="")


# --- the commands --------------------------------------------------------------------------


def key_generate(
    remote: Remote, profile: str, key_id: str, algorithm: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"profile": profile, "keyId": key_id}
    if algorithm is not None:
        body["algorithm"] = algorithm
    result: dict[str, Any] = remote.call("POST", "/v1/signer/keys", body=body)
    return result


def anchor_add_key(remote: Remote, anchor_id: str, key_id: str) -> dict[str, Any]:
    path = f"/v1/anchors/{_seg(anchor_id)}/keys"
    result: dict[str, Any] = remote.call("POST", path, body={"keyid": key_id, "publicKey": ""})
    return result


def anchor_revoke_key(
    remote: Remote, anchor_id: str, key_id: str, reason: str, effective_at: str
) -> dict[str, Any]:
    path = f"/v1/anchors/{_seg(anchor_id)}/keys/{_seg(key_id)}/revoke"
    body = {"reason": reason, "effectiveAt": effective_at}
    result: dict[str, Any] = remote.call("POST", path, body=body)
    return result


def ceremony_create(
    remote: Remote,
    ceremony_type: str,
    subject: str,
    payload: dict[str, Any],
    threshold: int | None,
    required_approvers: int | None,
    expires_in: str | None,
    expires_at: str | None,
) -> dict[str, Any]:
    from stellakeys.times import format_time, parse_duration, parse_time
    from stellakeys_cli.context import now

    # The API takes an absolute expiry; --expires-in is counted from this machine's clock.
    expiry = parse_time(expires_at) if expires_at else None
    if expires_in:
        expiry = now() + parse_duration(expires_in)
    body: dict[str, Any] = {"type": ceremony_type, "subject": subject, "payload": payload}
    if threshold is not None:
        body["threshold"] = threshold
    if required_approvers is not None:
        body["requiredApprovers"] = required_approvers
    if expiry is not None:
        body["expiresAt"] = format_time(expiry)
    result: dict[str, Any] = remote.call("POST", "/api/v1/ceremonies", body=body)
    return result


def ceremony_list(remote: Remote, states: str | None) -> list[dict[str, Any]]:
    params = {"state": states} if states else None
    result: list[dict[str, Any]] = remote.call("GET", "/api/v1/ceremonies", params=params)
    return result


def ceremony_status(remote: Remote, ceremony_id: str) -> dict[str, Any]:
    result: dict[str, Any] = remote.call("GET", f"/api/v1/ceremonies/{_seg(ceremony_id)}")
    return result


def ceremony_execute(remote: Remote, ceremony_id: str) -> dict[str, Any]:
    path = f"/api/v1/ceremonies/{_seg(ceremony_id)}/execute"
    result: dict[str, Any] = remote.call("POST", path)
    return result


def ceremony_cancel(remote: Remote, ceremony_id: str, reason: str) -> dict[str, Any]:
    path = f"/api/v1/ceremonies/{_seg(ceremony_id)}"
    result: dict[str, Any] = remote.call("DELETE", path, body={"reason": reason})
    return result


def ceremony_approve(
    remote: Remote,
    ceremony_id: str,
    reason: str,
    *,
    sign: bool,
    key_id: str | None,
    envelope_file: Path | None,
) -> dict[str, Any]:
    """Approve through the service. ``--sign``: the statement comes from the service (it names
    the token's identity), is signed with this home's key and posted as a DSSE envelope."""
    base = f"/api/v1/ceremonies/{_seg(ceremony_id)}"
    body: dict[str, Any] = {"reason": reason}
    if envelope_file is not None:
        body["signature"] = base64.b64encode(envelope_file.read_bytes()).decode("ascii")
    elif sign or key_id is not None:
        statement = remote.call("GET", base + "/statement", params={"reason": reason})
        if not isinstance(statement, dict) or not isinstance(statement.get("payload"), str):
            raise click.ClickException(f"the signer service at {remote.url} sent no statement")
        body["signature"] = _sign_locally(
            str(statement.get("payloadType", "")), statement["payload"], key_id
        )
    result: dict[str, Any] = remote.call("POST", base + "/approve", body=body)
    return result


def _sign_locally(payload_type: str, payload: str, key_id: str | None) -> str:
    """Base64 of the DSSE envelope of the statement, signed in the approver's own home."""
    from stellakeys.ceremony.statement import PAYLOAD_TYPE
    from stellakeys_cli.context import manager

    if payload_type != PAYLOAD_TYPE:
        # Never sign whatever a server hands us: only an approval statement.
        raise click.ClickException(
            f"the signer service sent a {payload_type!r} statement, not an approval statement;"
            " refusing to sign it (check --server)"
        )
    m = manager()
    if key_id is None:
        own = [r.key_id for r in m.list_keys() if r.key_store_uri is not None]
        if len(own) != 1:
            raise click.UsageError(
                f"this home holds {len(own)} signing keys: pass --key-id with the one"
                " approvers.yaml registers for you"
            )
        key_id = own[0]
    digest = m.sign(payload.encode("utf-8"), [key_id], payload_type=PAYLOAD_TYPE)
    return base64.b64encode(m.get_proof(digest).to_json()).decode("ascii")


def ceremony_table(rows: list[dict[str, Any]]) -> None:
    """``ceremony list`` without --json: the local command's columns, from the API's objects."""
    from stellakeys_cli.context import table

    table(
        ["Ceremony ID", "Type", "State", "Approvals", "Expires", "Initiator", "Subject"],
        [
            [
                str(c.get("ceremonyId")),
                str(c.get("type")),
                str(c.get("state")),
                f"{c.get('currentApprovals')}/{c.get('threshold')}",
                str(c.get("expiresAt")),
                str(c.get("initiator")),
                str(c.get("subject")),
            ]
            for c in rows
        ],
    )

"""The CLI as a client of the signer service (issue 19 #4): ``stellaops ... --server URL``
against a real ``stellaops serve``, the CLI run as a subprocess.

The clients are given a store they cannot open (a PostgreSQL URL nobody listens on): every
command that succeeds therefore went through the service. Approvers sign in their own homes,
whose keys approvers.yaml on the service's host registers; they hold no database credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stellakeys.audit import AuditQuery
from stellakeys.clock import FrozenClock
from stellakeys.manager import KeyManager
from tests.server.server_support import (
    CISO,
    INITIATOR,
    LEAD,
    PASSPHRASE,
    ROOT,
    T0,
    Issuer,
    Server,
    prepare_home,
    start_server,
    write_yaml,
)

NO_DATABASE = "postgresql://nobody@127.0.0.1:1/unreachable"
REASON = "Reviewed rotation plan, verified key parameters"


def _approver_home(tmp: Path, who: str) -> tuple[Path, str]:
    home = tmp / who.split("@")[0]
    home.mkdir(mode=0o700)
    profiles = {"default": {"algorithm": "ed25519", "keyStore": "software://default"}}
    write_yaml(home / "signer.yaml", {"signer": {"profiles": profiles}})
    with KeyManager.open(home, clock=FrozenClock(T0 - timedelta(days=1)), actor=who) as m:
        record = m.generate_key(who.split("@")[0] + "-approval", "default")
        return home, record.public_key_pem


@pytest.fixture(scope="module")
def remote_world(
    tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("remote")
    home, facts = prepare_home(tmp, issuer)
    homes: dict[str, Path] = {}
    registry = yaml.safe_load((home / "approvers.yaml").read_text())
    for who in (LEAD, CISO):
        homes[who], pem = _approver_home(tmp, who)
        registry["approvers"][who]["keys"] = [{"keyId": f"{who}-cli", "publicKey": pem}]
    write_yaml(home / "approvers.yaml", registry)
    server = start_server(home)
    try:
        yield {"server": server, "homes": homes, "tmp": tmp, **facts}
    finally:
        server.stop()


def stella(
    args: list[str],
    *,
    server: Server | None,
    token: str | None = None,
    home: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_TEST_NOW": T0.isoformat().replace("+00:00", "Z"),
        "STELLAKEYS_DATABASE_URL": NO_DATABASE,
    }
    for name in ("STELLAKEYS_TOKEN", "STELLAKEYS_SERVER", "STELLAKEYS_CONFIG", "STELLAKEYS_HOME"):
        env.pop(name, None)
    if token is not None:
        env["STELLAKEYS_TOKEN"] = token
    if server is not None:
        env["STELLAKEYS_SERVER"] = server.url
    env.update(extra_env or {})
    head = [sys.executable, "-m", "stellakeys_cli"]
    if home is not None:
        # The approver's own home (its embedded store), not the unreachable database.
        env.pop("STELLAKEYS_DATABASE_URL")
        head += ["--home", str(home)]
    return subprocess.run(
        [*head, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line
        for line in done.stderr.splitlines()
        if line.strip() and "STELLAKEYS_TEST_NOW" not in line
    ]


def ok_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def create(issuer: Issuer, server: Server, key_id: str) -> str:
    done = stella(
        [
            "ceremony", "create", "--type", "key-rotation",
            "--subject", f"Root signing key {key_id}", "--threshold", "2",
            "--expires-in", "24h",
            "--payload", json.dumps({"keyId": key_id, "algorithm": "ecdsa-p384"}), "--json",
        ],
        server=server,
        token=issuer.token(INITIATOR, "ceremony:create"),
    )  # fmt: skip
    body = ok_json(done)
    assert body["initiator"] == INITIATOR and body["state"] == "Pending"
    assert body["expiresAt"] == "2026-01-17T10:00:00Z"
    return str(body["ceremonyId"])


def test_ceremony_lifecycle_through_the_cli_client(
    remote_world: dict[str, Any], issuer: Issuer
) -> None:
    server: Server = remote_world["server"]
    cid = create(issuer, server, "root-via-cli")
    listed = ok_json(
        stella(
            ["ceremony", "list", "--state", "pending,partially-approved", "--json"],
            server=server,
            token=issuer.token("viewer@company.com", "ceremony:read"),
        )
    )
    assert cid in [c["ceremonyId"] for c in listed]
    for n, who in enumerate((LEAD, CISO), start=1):
        done = stella(
            ["ceremony", "approve", "--ceremony-id", cid, "--reason", REASON, "--sign", "--json"],
            server=server,
            token=issuer.token(who, "ceremony:approve"),
            home=remote_world["homes"][who],
        )
        body = ok_json(done)
        assert body["currentApprovals"] == n
        assert body["approval"]["approver"] == who
        assert body["approval"]["signatureValid"] is True
    executed = ok_json(
        stella(
            ["ceremony", "execute", "--ceremony-id", cid, "--json"],
            server=server,
            token=issuer.token(INITIATOR, "ceremony:execute"),
        )
    )
    assert executed["state"] == "Executed" and executed["result"]["keyId"] == "root-via-cli"
    status = ok_json(
        stella(
            ["ceremony", "status", "--ceremony-id", cid, "--json"],
            server=server,
            token=issuer.token("viewer@company.com", "ceremony:read"),
        )
    )
    assert status["state"] == "Executed"
    with server.manager() as m:
        approved = m.audit_events(
            AuditQuery(event_type="signer.ceremony.approved", ceremony_id=cid)
        )
        assert m.get_key("root-via-cli").algorithm.startswith("ecdsa-p384")
    assert sorted(e.actor for e in approved) == sorted([LEAD, CISO])


def test_approve_without_the_scope_is_refused(remote_world: dict[str, Any], issuer: Issuer) -> None:
    server: Server = remote_world["server"]
    cid = create(issuer, server, "root-no-scope")
    done = stella(
        ["ceremony", "approve", "--ceremony-id", cid, "--reason", REASON, "--sign", "--json"],
        server=server,
        token=issuer.token(LEAD, "ceremony:read"),
        home=remote_world["homes"][LEAD],
    )
    assert done.returncode != 0
    lines = error_lines(done)
    assert len(lines) == 1, done.stderr
    assert "missing-scope" in lines[0] and "ceremony:approve" in lines[0]
    assert "Traceback" not in done.stderr
    with server.manager() as m:
        assert (
            m.audit_events(AuditQuery(event_type="signer.ceremony.approved", ceremony_id=cid)) == []
        )


def test_approval_signed_with_an_unregistered_key_is_rejected(
    remote_world: dict[str, Any], issuer: Issuer
) -> None:
    """LEAD signs in CISO's home (a key registered for someone else): the service refuses."""
    server: Server = remote_world["server"]
    cid = create(issuer, server, "root-wrong-key")
    done = stella(
        ["ceremony", "approve", "--ceremony-id", cid, "--reason", REASON, "--sign", "--json"],
        server=server,
        token=issuer.token(LEAD, "ceremony:approve"),
        home=remote_world["homes"][CISO],
    )
    assert done.returncode != 0
    assert "approval-rejected" in error_lines(done)[0]


def test_world_readable_token_file_is_refused(remote_world: dict[str, Any], issuer: Issuer) -> None:
    server: Server = remote_world["server"]
    path: Path = remote_world["tmp"] / "token"
    path.write_text(issuer.token("viewer@company.com", "ceremony:read") + "\n")
    args = ["ceremony", "list", "--json", "--token-file", str(path)]
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        done = stella(args, server=server)
        assert done.returncode == 2, done.stderr
        assert "chmod 600" in error_lines(done)[0]
    path.chmod(0o600)
    assert isinstance(ok_json(stella(args, server=server)), list)


def test_missing_token_and_clear_text_url_are_refused(remote_world: dict[str, Any]) -> None:
    server: Server = remote_world["server"]
    done = stella(["ceremony", "list"], server=server)
    assert done.returncode == 2 and "STELLAKEYS_TOKEN" in error_lines(done)[0]
    done = stella(
        ["ceremony", "list", "--server", "http://signer.example.com:8080"],
        server=None,
        token="abc.def.ghi",
    )
    assert done.returncode == 2 and "https://" in error_lines(done)[0]


def test_expired_token_names_the_fix(remote_world: dict[str, Any], issuer: Issuer) -> None:
    old = issuer.token(INITIATOR, "ceremony:read", now=T0 - timedelta(hours=2))
    done = stella(["ceremony", "list"], server=remote_world["server"], token=old)
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert "401 unauthenticated" in line and "fresh access token" in line


def test_key_generate_and_protected_anchor_operations(
    remote_world: dict[str, Any], issuer: Issuer
) -> None:
    server: Server = remote_world["server"]
    made = ok_json(
        stella(
            ["key", "generate", "--key-id", "cli-made-key", "--json"],
            server=server,
            token=issuer.token("ops@company.com", "keys:write"),
        )
    )
    assert made["keyId"] == "cli-made-key"
    with server.manager() as m:
        events = m.audit_events(AuditQuery(event_type="KEY_GENERATED", key_id="cli-made-key"))
    assert [e.actor for e in events] == ["ops@company.com"]
    anchor = remote_world["anchor_id"]
    token = issuer.token("ops@company.com", "anchors:write")
    for args in (
        ["anchor", "add-key", "--anchor-id", anchor, "--key-id", "cli-made-key"],
        [
            "anchor",
            "revoke-key",
            "--anchor-id",
            anchor,
            "--key-id",
            "release-key",
            "--reason",
            "superseded",
        ],
    ):
        done = stella(args, server=server, token=token)
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert "policy-refused" in line and "create a ceremony" in line
    with server.manager() as m:
        assert m.get_anchor(anchor).allowed_keyids(m.clock.now()) == ("release-key",)


def test_cancel_through_the_cli(remote_world: dict[str, Any], issuer: Issuer) -> None:
    server: Server = remote_world["server"]
    cid = create(issuer, server, "root-cancel-cli")
    done = ok_json(
        stella(
            ["ceremony", "cancel", "--ceremony-id", cid, "--reason", "wrong parameters", "--json"],
            server=server,
            token=issuer.token(INITIATOR, "ceremony:read"),
        )
    )
    assert done["state"] == "Cancelled" and done["cancelReason"] == "wrong parameters"


def test_unreachable_server_is_one_line(issuer: Issuer) -> None:
    done = stella(
        ["ceremony", "status", "--ceremony-id", "x", "--server", "http://127.0.0.1:1"],
        server=None,
        token=issuer.token(INITIATOR, "ceremony:read"),
    )
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert "cannot reach the signer service" in line

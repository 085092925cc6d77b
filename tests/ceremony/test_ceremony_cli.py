"""The runbook's CLI, run as separate processes on one home (``python -m stellakeys_cli``).

Approvers sign with keys this home holds (``stella key generate``) and that approvers.yaml
registers; two approvers approve from two processes at once; the notifications reach a real
local SMTP server and a real local webhook; the audit query of the runbook finds the events.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ceremony_support import CISO, INITIATOR, LEAD, OFFICER_1, HttpSink, SmtpSink

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "cli-test-passphrase"


class Cli:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def command(self, actor: str, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "stellakeys_cli",
            "--home",
            str(self.home),
            "--actor",
            actor,
            *args,
        ]

    def run(self, actor: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(actor, *args), env=self.env, capture_output=True, text=True, timeout=120
        )
        if ok and proc.returncode != 0:
            pytest.fail(f"stella {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        if not ok:
            assert proc.returncode != 0, proc.stdout
        return proc

    def json(self, actor: str, *args: str) -> Any:
        # Human output is the default (issue 17): ask for JSON.
        return json.loads(self.run(actor, *args, *(() if "--json" in args else ("--json",))).stdout)


def write_yaml(path: Path, value: object) -> None:
    path.write_text(yaml.safe_dump(value, sort_keys=False))


def make_home(
    tmp_path: Path,
    approvers: dict[str, str],
    *,
    extra_profiles: dict[str, Any] | None = None,
    env_extra: dict[str, str] | None = None,
    notifications: dict[str, Any] | None = None,
) -> Cli:
    """A home whose approvers' keys were generated in it, registered in approvers.yaml."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {
        **os.environ,
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "PYTHONPATH": str(ROOT),
        **(env_extra or {}),
    }
    env.pop("STELLAKEYS_HOME", None)
    env.pop("STELLAKEYS_CONFIG", None)
    cli = Cli(home, env)
    profiles = {
        "default": {"algorithm": "ed25519", "keyStore": "software://default"},
        "fips": {"algorithm": "ecdsa-p256", "keyStore": "software://default"},
        "root": {"algorithm": "ecdsa-p384", "keyStore": "software://default"},
        **(extra_profiles or {}),
    }
    signer: dict[str, Any] = {"signer": {"profiles": profiles}}
    write_yaml(home / "signer.yaml", signer)
    registered: dict[str, Any] = {}
    for who, profile in approvers.items():
        key_id = who.split("@")[0] + "-key"
        record = cli.json(
            who, "key", "generate", "--profile", profile, "--key-id", key_id, "--json"
        )
        registered[who] = {"keys": [{"keyId": key_id, "publicKey": record["publicKey"]}]}
    registered[LEAD]["scopes"] = ["ceremony:approve", "ceremony:cancel"]
    write_yaml(
        home / "approvers.yaml",
        {
            "approverGroups": [
                {
                    "name": "key-custodians",
                    "members": list(approvers),
                    "operations": ["key-rotation", "key-revocation", "hsm-key-generation"],
                },
                {
                    "name": "trust-admins",
                    "members": [LEAD, CISO],
                    "operations": ["trust-anchor-update"],
                },
            ],
            "approvers": registered,
        },
    )
    signer["ceremonies"] = {
        "enabled": True,
        "defaultTimeout": "24h",
        "maxTimeout": "168h",
        "requireSignedApprovals": True,
        "approvers": "approvers.yaml",
        "thresholds": {"key-rotation": {"minimum": 2, "default": 2, "maximum": 5}},
    }
    if notifications is not None:
        signer["notifications"] = notifications
    write_yaml(home / "signer.yaml", signer)
    return cli


def test_two_approvers_in_two_processes(
    tmp_path: Path, smtp_server: SmtpSink, http_server: HttpSink
) -> None:
    cli = make_home(
        tmp_path,
        {LEAD: "fips", CISO: "default", OFFICER_1: "default"},
        env_extra={"SLACK_CEREMONY_WEBHOOK": http_server.url + "/services/T0/B0/secret"},
        notifications={
            "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "from": "signer@company.com"},
            "ceremonies": {
                "enabled": True,
                "channels": [
                    {"type": "email", "recipients": "@approverGroup"},
                    {
                        "type": "slack",
                        "webhook": "${SLACK_CEREMONY_WEBHOOK}",
                        "channel": "#key-ceremonies",
                    },
                ],
            },
        },
    )
    created = cli.json(
        INITIATOR,
        "ceremony",
        "create",
        "--type",
        "key-rotation",
        "--subject",
        "Root signing key Q1-2026",
        "--threshold",
        "2",
        "--required-approvers",
        "3",
        "--expires-in",
        "24h",
        "--payload",
        '{"keyId": "root-2026-q1", "algorithm": "ecdsa-p384"}',
    )
    cid = created["ceremonyId"]
    assert list(created) == [
        "ceremonyId",
        "type",
        "state",
        "threshold",
        "requiredApprovers",
        "currentApprovals",
        "createdAt",
        "expiresAt",
        "initiator",
    ]
    assert (created["state"], created["currentApprovals"], created["initiator"]) == (
        "Pending",
        0,
        INITIATOR,
    )
    # Created: one e-mail to the eligible approvers, one Slack message.
    [(rcpts, mail)] = smtp_server.wait(1)
    assert sorted(rcpts) == sorted([LEAD, CISO, OFFICER_1])
    assert cid in mail["Subject"] or cid in mail.get_content()
    assert http_server.wait(1)[0]["json"]["channel"] == "#key-ceremonies"

    pending = cli.run(LEAD, "ceremony", "list", "--state", "pending,partially-approved").stdout
    assert cid in pending

    # Two approvers, two processes, at the same time.
    reason = "Reviewed rotation plan, verified key parameters"
    procs = [
        subprocess.Popen(
            cli.command(
                who,
                "ceremony",
                "approve",
                "--ceremony-id",
                cid,
                "--reason",
                reason,
                "--sign",
                "--json",
            ),
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in (LEAD, CISO)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    responses = [json.loads(out) for out, _ in outputs]
    assert sorted(r["currentApprovals"] for r in responses) == [1, 2]
    assert sorted(r["state"] for r in responses) == ["Approved", "PartiallyApproved"]
    for r, who in zip(responses, (LEAD, CISO), strict=True):
        assert list(r) == ["ceremonyId", "state", "currentApprovals", "threshold", "approval"]
        assert list(r["approval"]) == [
            "approvalId",
            "approver",
            "approvedAt",
            "reason",
            "signatureValid",
        ]
        assert r["approval"]["approver"] == who and r["approval"]["signatureValid"] is True
    assert (
        cli.run(LEAD, "ceremony", "list", "--state", "pending,partially-approved").stdout.count(cid)
        == 0
    )

    executed = cli.json(OFFICER_1, "ceremony", "execute", "--ceremony-id", cid)
    assert list(executed) == ["ceremonyId", "state", "executedAt", "result"]
    assert executed["state"] == "Executed"
    result = executed["result"]
    assert list(result)[:4] == ["keyId", "publicKey", "fingerprint", "activatedAt"]
    assert result["keyId"] == "root-2026-q1"
    assert result["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert result["fingerprint"].startswith("SHA256:")
    keys = {k["keyId"]: k for k in cli.json(INITIATOR, "key", "list", "--json")}
    assert keys["root-2026-q1"]["algorithm"] == "ecdsa-p384-sha384"
    assert keys["root-2026-q1"]["fingerprint"] == result["fingerprint"]

    again = cli.run(OFFICER_1, "ceremony", "execute", "--ceremony-id", cid, ok=False)
    assert "Executed" in again.stderr

    status = cli.json(INITIATOR, "ceremony", "status", "--ceremony-id", cid)
    assert status["state"] == "Executed" and len(status["approvals"]) == 2
    assert status["payload"]["profile"] == "root"

    events = cli.json(
        INITIATOR,
        "audit",
        "query",
        "--event-type",
        "signer.ceremony.*",
        "--since",
        "7d",
        "--ceremony-id",
        cid,
        "--json",
    )
    assert [e["event_type"] for e in reversed(events)] == [
        "signer.ceremony.initiated",
        "signer.ceremony.approved",
        "signer.ceremony.approved",
        "signer.ceremony.threshold_reached",
        "signer.ceremony.executed",
    ]
    approved = [e for e in events if e["event_type"] == "signer.ceremony.approved"]
    assert {e["actor"] for e in approved} == {LEAD, CISO}
    by_actor = {e["actor"]: e["details"] for e in approved}
    assert by_actor[LEAD]["signatureAlgorithm"] == "ecdsa-p256-sha256"
    assert by_actor[LEAD]["signatureKeyId"] == "security-lead-key"
    assert cli.run(INITIATOR, "audit", "verify").returncode == 0

    # Notifications: approval submitted (to the remaining approvers) and threshold reached
    # (to the initiator), by e-mail; everything to Slack as well.
    mails = smtp_server.wait(3)
    assert [INITIATOR] in [r for r, _ in mails]
    assert len(http_server.wait(3)) >= 3
    assert all("secret" not in json.dumps(r["json"]) for r in http_server.requests)


def test_troubleshooting_rows_and_refusals_from_the_cli(tmp_path: Path) -> None:
    cli = make_home(tmp_path, {LEAD: "default", CISO: "default", OFFICER_1: "default"})
    cid = cli.json(
        INITIATOR,
        "ceremony",
        "create",
        "--type",
        "key-rotation",
        "--subject",
        "Rotate",
        "--payload",
        '{"keyId": "k-1"}',
    )["ceremonyId"]
    approve = ["ceremony", "approve", "--ceremony-id", cid, "--reason", "ok"]
    # Invalid signature: signed with another approver's key.
    bad = cli.run(LEAD, *approve, "--key-id", "ciso-key", ok=False)
    assert "invalid-signature" in bad.stderr and "re-sign with the correct key" in bad.stderr
    # Unsigned while signed approvals are required.
    assert "--sign" in cli.run(LEAD, *approve, ok=False).stderr
    # Already approved.
    cli.run(LEAD, *approve, "--sign")
    dup = cli.run(LEAD, *approve, "--sign", ok=False)
    assert "a different approver must approve" in dup.stderr
    # Threshold not met.
    early = cli.run(INITIATOR, "ceremony", "execute", "--ceremony-id", cid, ok=False)
    assert "collect more approvals" in early.stderr
    # The initiator cannot approve their own ceremony.
    assert "approval rejected" in cli.run(INITIATOR, *approve, ok=False).stderr
    # Cancel: not by another approver without the scope; by the initiator, yes.
    denied = cli.run(CISO, "ceremony", "cancel", "--ceremony-id", cid, "--reason", "x", ok=False)
    assert "ceremony:cancel" in denied.stderr
    done = cli.json(INITIATOR, "ceremony", "cancel", "--ceremony-id", cid, "--reason", "Postponed")
    assert done["state"] == "Cancelled" and done["cancelReason"] == "Postponed"
    rejected = cli.json(
        INITIATOR,
        "audit",
        "query",
        "--event-type",
        "signer.ceremony.approval_rejected",
        "--ceremony-id",
        cid,
        "--json",
    )
    codes = sorted(e["details"]["code"] for e in rejected)
    # The initiator is no approver here, so it lacks the scope before anything else.
    assert codes == ["already-approved", "invalid-signature", "missing-scope", "unsigned"]
    # Protected operations are refused outside a ceremony.
    anchor = cli.run(
        INITIATOR,
        "anchor",
        "create",
        "--purl-pattern",
        "pkg:npm/*",
        "--key-ids",
        "ciso-key",
        "--predicate-types",
        "evidence.stella/v1",
        ok=False,
    )
    assert "protected by dual control" in anchor.stderr


def test_auth_keys_list_and_info(tmp_path: Path) -> None:
    cli = make_home(tmp_path, {LEAD: "fips", CISO: "default", OFFICER_1: "default"})
    listing = cli.json(LEAD, "auth", "keys", "list", "--json")
    assert listing["actor"] == {"identity": LEAD, "scopes": ["ceremony:approve", "ceremony:cancel"]}
    rows = {r["keyId"]: r for r in listing["keys"]}
    assert set(rows) == {"security-lead-key", "ciso-key", "key-officer-1-key"}
    assert rows["security-lead-key"]["isActor"] and rows["security-lead-key"]["canSign"]
    assert rows["security-lead-key"]["algorithm"] == "ecdsa-p256-sha256"
    text = cli.run(LEAD, "auth", "keys", "list").stdout
    assert "security-lead-key" in text and "Actor: security-lead@company.com" in text
    info = cli.json(CISO, "auth", "keys", "info", "--key-id", "ciso-key", "--json")
    assert info["approver"] == CISO and info["scopes"] == ["ceremony:approve"]
    assert [g["name"] for g in info["groups"]] == ["key-custodians", "trust-admins"]
    assert info["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    missing = cli.run(CISO, "auth", "keys", "info", "--key-id", "nope", ok=False)
    assert "not registered" in missing.stderr


def _softhsm_token(directory: Path) -> dict[str, str]:
    """A fresh SoftHSM2 token made with softhsm2-util, for the CLI processes only (this test
    process never loads the module, so it cannot disturb the keystore tests' session)."""
    util = shutil.which("softhsm2-util")
    module = "/usr/lib/softhsm/libsofthsm2.so"
    if util is None or not Path(module).exists():
        pytest.fail(f"SoftHSM2 is missing (softhsm2-util and {module}): install Debian softhsm2")
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {"SOFTHSM2_CONF": str(conf), "STELLAKEYS_PKCS11_PIN": "4321-user"}
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            "CER",
            "--so-pin",
            "so-0000",
            "--pin",
            "4321-user",
        ],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return {**env, "STELLAKEYS_PKCS11_MODULE": module}


def test_hsm_key_generation_ceremony_on_softhsm(tmp_path: Path) -> None:
    hsm = {"algorithm": "ecdsa-p256", "keyStore": "hsm://pkcs11/token/CER"}
    env = _softhsm_token(tmp_path)
    # One approver signs with a key inside the HSM itself (generated before ceremonies were
    # switched on: HSM key generation is itself a protected operation).
    cli = make_home(
        tmp_path,
        {LEAD: "hsm", CISO: "default", OFFICER_1: "default", "key-officer-2@company.com": "fips"},
        extra_profiles={"hsm": hsm},
        env_extra=env,
    )
    direct = cli.run(INITIATOR, "key", "generate", "--profile", "hsm", "--key-id", "x", ok=False)
    assert "protected by dual control" in direct.stderr
    created = cli.json(
        INITIATOR,
        "ceremony",
        "create",
        "--type",
        "hsm-key-generation",
        "--subject",
        "Root key in the HSM",
        "--payload",
        '{"keyId": "hsm-root-2026", "profile": "hsm"}',
    )
    assert (created["threshold"], created["requiredApprovers"]) == (2, 4)
    cid = created["ceremonyId"]
    for who in (LEAD, CISO):
        cli.run(who, "ceremony", "approve", "--ceremony-id", cid, "--reason", "ok", "--sign")
    result = cli.json(INITIATOR, "ceremony", "execute", "--ceremony-id", cid)["result"]
    keys = {k["keyId"]: k for k in cli.json(INITIATOR, "key", "list", "--json")}
    assert keys["hsm-root-2026"]["keyStore"].startswith("pkcs11:")
    assert keys["hsm-root-2026"]["fingerprint"] == result["fingerprint"]
    status = cli.json(INITIATOR, "ceremony", "status", "--ceremony-id", cid)
    lead = next(a for a in status["approvals"] if a["approver"] == LEAD)
    assert lead["signatureKeyId"] == "security-lead-key" and lead["signatureValid"]

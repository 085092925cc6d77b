"""A real signer service for the tests: a home prepared in-process, then ``stellaops serve`` in
a subprocess (uvicorn) on a free loopback port, its clock frozen with STELLAKEYS_TEST_NOW.

The OpenID Provider is the test itself: an EC P-256 key whose public JWKS is the server's
``jwksFile``; :meth:`Issuer.token` mints RFC 9068 access tokens (and hostile variants).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from joserfc import jwt
from joserfc.jwk import ECKey

from stellakeys.clock import FrozenClock
from stellakeys.crypto import PrivateKey, get_algorithm
from stellakeys.intoto import Statement, Subject
from stellakeys.manager import KeyManager
from stellakeys_server.auth import hash_password

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 16, 10, 0, tzinfo=UTC)
ISSUER = "http://127.0.0.1/test-issuer"
AUDIENCE = "stellaops-signer"
PASSPHRASE = "server-test-passphrase"
BREAK_GLASS_PASSWORD = "correct horse battery staple"

INITIATOR = "admin@company.com"
LEAD = "security-lead@company.com"
CISO = "ciso@company.com"
OFFICER = "key-officer-1@company.com"
ALL_SCOPES = (
    "keys:read keys:write anchors:read anchors:write proofs:verify audit:read"
    " ceremony:read ceremony:create ceremony:execute"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Issuer:
    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": "issuer-1"}, private=True)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def token(
        self,
        subject: str,
        scope: str,
        *,
        now: datetime = T0,
        lifetime: timedelta = timedelta(minutes=10),
        key: ECKey | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"user-{subject.split('@')[0]}",
            "email": subject,
            "scope": scope,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
            "client_id": "stella-cli",
            "jti": os.urandom(8).hex(),
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        signing = key or self.key
        head = {"alg": "ES256", "typ": "at+jwt", "kid": signing.kid, **(header or {})}
        return jwt.encode(head, body, signing)


def unsigned_token(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def seg(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{seg(header)}.{seg(claims)}."


class Server:
    def __init__(self, home: Path, base_url: str, proc: subprocess.Popen[bytes]) -> None:
        self.home = home
        self.url = base_url
        self.proc = proc
        self.client = httpx.Client(base_url=base_url, timeout=30.0)

    def manager(self) -> KeyManager:
        """A second process's view of the same store (for checking what was written)."""
        return KeyManager.open(self.home, clock=FrozenClock(T0))

    def stop(self) -> str:
        self.client.close()
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode("utf-8", "replace")


def write_yaml(path: Path, value: object) -> None:
    path.write_text(yaml.safe_dump(value, sort_keys=False))


def prepare_home(tmp: Path, issuer: Issuer) -> tuple[Path, dict[str, Any]]:
    """A home with a signing key, an anchor for pkg:npm/*, a stored proof, approvers with keys
    held only by the test, then dual control switched on and the server section written."""
    home = tmp / "home"
    home.mkdir(mode=0o700)
    os.environ["STELLAKEYS_PASSPHRASE"] = PASSPHRASE
    profiles = {
        "default": {"algorithm": "ed25519", "keyStore": "software://default"},
        "root": {"algorithm": "ecdsa-p384", "keyStore": "software://default"},
    }
    signer: dict[str, Any] = {"signer": {"profiles": profiles}}
    write_yaml(home / "signer.yaml", signer)
    facts: dict[str, Any] = {}
    with KeyManager.open(home, clock=FrozenClock(T0 - timedelta(days=30)), actor="setup") as m:
        m.generate_key("release-key", "default")
        m.generate_key("spare-key", "default")
        anchor = m.create_anchor("pkg:npm/*", ["release-key"], ["evidence.stella/v1"])
        statement = Statement(
            subjects=(Subject("pkg:npm/left-pad@1.3.0", {"sha256": "ab" * 32}),),
            predicate_type="evidence.stella/v1",
            predicate={"ok": True},
        )
        digest = m.sign(statement.to_json(), ["release-key"])
        facts["anchor_id"] = str(anchor.anchor_id)
        facts["proof"] = digest
        facts["envelope"] = json.loads(m.get_proof(digest).to_json())
    approver_keys: dict[str, PrivateKey] = {
        who: get_algorithm("ed25519").generate() for who in (LEAD, CISO, OFFICER)
    }
    facts["approver_keys"] = approver_keys
    registered = {
        who: {
            "keys": [{"keyId": who.split("@")[0] + "-key", "publicKey": k.public_key().to_pem()}],
            "scopes": ["ceremony:approve"],
        }
        for who, k in approver_keys.items()
    }
    write_yaml(
        home / "approvers.yaml",
        {
            "approverGroups": [
                {
                    "name": "key-custodians",
                    "members": list(approver_keys),
                    "operations": ["key-rotation", "key-revocation"],
                },
                {"name": "trust-admins", "members": [LEAD, CISO], "operations": []},
            ],
            "approvers": registered,
        },
    )
    (home / "jwks.json").write_text(json.dumps(issuer.jwks()))
    signer["ceremonies"] = {
        "enabled": True,
        "defaultTimeout": "24h",
        "maxTimeout": "168h",
        "requireSignedApprovals": True,
        "approvers": "approvers.yaml",
        "thresholds": {"key-rotation": {"minimum": 2, "default": 2, "maximum": 5}},
    }
    signer["server"] = {
        "oidc": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwksFile": "jwks.json",
            "algorithms": ["ES256", "EdDSA"],
            "leewaySeconds": 30,
        },
        "breakGlass": {
            "enabled": True,
            "accounts": [
                {
                    "name": "bg-oncall",
                    "passwordHash": hash_password(BREAK_GLASS_PASSWORD),
                    "scopes": ["proofs:verify"],
                    "validUntil": (T0 + timedelta(days=1)).isoformat(),
                }
            ],
        },
        "maxBodyBytes": 65536,
    }
    write_yaml(home / "signer.yaml", signer)
    return home, facts


def start_server(home: Path, now: datetime = T0, *, workers: int = 1) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "STELLAKEYS_TEST_NOW": now.isoformat().replace("+00:00", "Z"),
    }
    env.pop("STELLAKEYS_CONFIG", None)
    cmd = [sys.executable, "-m", "stellakeys_cli", "--home", str(home), "--actor", "signer-svc"]
    proc = subprocess.Popen(
        [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"stellaops serve exited ({proc.returncode}): {out}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return Server(home, url, proc)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("stellaops serve did not answer /healthz within 60 s")

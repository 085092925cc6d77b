"""A real OpenID Provider for the server tests: panva/oidc-provider on Node, started by
``tests/interop/oidc_provider/provider.mjs`` on a loopback port.

Its npm packages (exact versions, ``tests/interop/oidc_provider/package-lock.json``) come from
``STELLAKEYS_OIDC_PROVIDER_MODULES``, a node_modules directory that ``.ci/run`` installs. The
test fails (never skips) when it is not there, saying what to run.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from base64 import urlsafe_b64decode
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from tests.node_support import npm_ci
from tests.server.server_support import ROOT, free_port

HERE = ROOT / "tests" / "interop" / "oidc_provider"
MODULES_ENV = "STELLAKEYS_OIDC_PROVIDER_MODULES"
CLIENT_ID = "stella-ci"
CLIENT_SECRET = "interop-client-secret-1"
#: The signer service's resource indicator: the ``aud`` of its tokens, and server.oidc.audience.
RESOURCE = "urn:stellaops:signer"
#: Another API the same provider serves: its tokens must not open the signer service.
OTHER_RESOURCE = "urn:example:inventory-api"
SIGNER_SCOPES = (
    "keys:read keys:write anchors:read anchors:write proofs:verify audit:read"
    " ceremony:read ceremony:create ceremony:approve ceremony:execute ceremony:cancel"
)

INSTALL_HINT = (
    f"set {MODULES_ENV} to a node_modules directory with the packages of"
    f" tests/interop/oidc_provider, e.g.:\n"
    f"  mkdir -p /tmp/oidc-modules && cp {HERE}/package.json {HERE}/package-lock.json"
    f" /tmp/oidc-modules/ && (cd /tmp/oidc-modules && npm ci --no-audit --no-fund --omit=dev)"
    f"\n  export {MODULES_ENV}=/tmp/oidc-modules/node_modules\n(.ci/run does this.)"
)


def node_modules(scratch: Path) -> Path:
    """The installed packages: ``$STELLAKEYS_OIDC_PROVIDER_MODULES`` (``.ci/run`` installs them
    once), else ``npm ci`` of the pinned lock file into ``scratch`` (as the sigstore-js test
    does). No node or npm, or a failed install, fails the test with what to do."""
    if shutil.which("node") is None:
        pytest.fail("node is required (Node.js 20.17 or later: apt-get install nodejs)")
    given = os.environ.get(MODULES_ENV)
    if given:
        modules = Path(given)
        if not (modules / "oidc-provider" / "package.json").is_file():
            pytest.fail(f"{modules} holds no oidc-provider package: {INSTALL_HINT}")
        return modules
    return npm_ci(HERE, scratch)


def signing_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})


def _segment(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    value: dict[str, Any] = json.loads(urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return value


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified (to read what the provider put in it)."""
    return _segment(token, 1)


def header_of(token: str) -> dict[str, Any]:
    return _segment(token, 0)


class OidcProvider:
    """provider.mjs in a subprocess. ``rotate`` restarts it on the same port (so the same
    issuer) with another signing key set: that is how a key rotation looks from outside."""

    def __init__(self, workdir: Path, modules: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        # ESM imports ignore NODE_PATH: the script resolves "oidc-provider" from a node_modules
        # next to it, so it runs from a directory with the installed packages linked in.
        shutil.copy(HERE / "provider.mjs", self.dir / "provider.mjs")
        (self.dir / "node_modules").symlink_to(modules, target_is_directory=True)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token_endpoint = ""
        self.keys: list[ECKey] = []

    def start(self, keys: list[ECKey], sign_kid: str) -> None:
        self.keys = list(keys)
        jwks_file = self.dir / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [k.as_dict(private=True) for k in keys]}))
        jwks_file.chmod(0o600)
        env = {
            **os.environ,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_JWKS_FILE": str(jwks_file),
            "OIDC_SIGN_KID": sign_kid,
            "OIDC_RESOURCES": json.dumps(
                {RESOURCE: SIGNER_SCOPES, OTHER_RESOURCE: "proofs:verify inventory:read"}
            ),
            "OIDC_TOKEN_TTL": "600",
        }
        self.proc = subprocess.Popen(
            ["node", str(self.dir / "provider.mjs"), str(self.port)],
            cwd=self.dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = self._first_line(timeout=30.0)
        if line != f"READY {self.issuer}":
            err = self.stop()
            raise AssertionError(f"provider.mjs did not start (stdout {line!r}): {err}")
        meta = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=10).json()
        assert meta["issuer"] == self.issuer
        self.token_endpoint = meta["token_endpoint"]

    def _first_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            buf = b""
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return buf.decode(errors="replace")
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.decode(errors="replace").strip()

    def rotate(self, keys: list[ECKey], sign_kid: str) -> None:
        self.stop()
        self.start(keys, sign_kid)

    def token(self, scope: str, resource: str = RESOURCE) -> str:
        """An access token by the client-credentials grant (client_secret_basic)."""
        r = httpx.post(
            self.token_endpoint,
            auth=(CLIENT_ID, CLIENT_SECRET),
            data={"grant_type": "client_credentials", "scope": scope, "resource": resource},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "Bearer"
        token: str = body["access_token"]
        return token

    def stop(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return err.decode("utf-8", "replace")

"""``stellaops serve`` against a real OpenID Provider not written here (issue 19 #5).

panva/oidc-provider (Node, exact version pinned in tests/interop/oidc_provider) issues RFC 9068
JWT access tokens by the client-credentials grant, with Resource Indicators. The service is
configured with nothing but ``server.oidc.issuer`` and ``audience``: it reads the provider's
discovery document and JWKS over HTTP itself. Tokens are fetched over HTTP too, so what is
tested is the provider's real output (``typ: at+jwt``, ES256, ``sub`` = the client id, no
``email``, ``scope`` filtered by the resource), not tokens we mint.

The service's clock is frozen (STELLAKEYS_TEST_NOW) at the ``iat`` of the provider's first
token, not at today's date, so the test holds under faketime too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from stellakeys.audit import AuditQuery
from stellakeys_server.actions import EVENT_UNAUTHORIZED
from tests.server.oidc_provider_support import (
    CLIENT_ID,
    OTHER_RESOURCE,
    RESOURCE,
    OidcProvider,
    claims_of,
    header_of,
    node_modules,
    signing_key,
)
from tests.server.server_support import Issuer, Server, prepare_home, start_server

REFRESH_FLOOR = 1  # seconds: the smallest floor the configuration accepts


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    modules = node_modules(tmp_path_factory.mktemp("oidc-provider-packages"))
    op = OidcProvider(tmp_path_factory.mktemp("oidc-provider"), modules)
    op.start([signing_key("op-key-1")], "op-key-1")
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, provider: OidcProvider) -> Iterator[Any]:
    home, facts = prepare_home(tmp_path_factory.mktemp("real-oidc"), Issuer())
    config_path = home / "signer.yaml"
    config = yaml.safe_load(config_path.read_text())
    # Only the issuer and the audience: keys come from discovery -> jwks_uri.
    config["server"] = {
        "oidc": {
            "issuer": provider.issuer,
            "audience": RESOURCE,
            "algorithms": ["ES256"],
            # The frozen clock stays at the first token's iat while later tokens are issued
            # at the provider's real time: the leeway covers the test's run.
            "leewaySeconds": 300,
            "jwksRefreshFloorSeconds": REFRESH_FLOOR,
        }
    }
    (home / "jwks.json").unlink()
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    first = provider.token("proofs:verify")
    now = datetime.fromtimestamp(claims_of(first)["iat"], UTC)
    server = start_server(home, now=now)
    try:
        yield {"server": server, "home": home, **facts}
    finally:
        server.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unauthorized_events(server: Server) -> list[Any]:
    with server.manager() as m:
        return m.audit_events(AuditQuery(event_type=EVENT_UNAUTHORIZED))


def test_the_provider_issues_rfc9068_tokens_for_the_client(provider: OidcProvider) -> None:
    """What the service is given: a JWT access token naming the client, no email."""
    token = provider.token("proofs:verify keys:write not:a-signer-scope")
    claims = claims_of(token)
    assert claims["iss"] == provider.issuer
    assert claims["aud"] == RESOURCE
    assert claims["sub"] == CLIENT_ID == claims["client_id"]
    assert "email" not in claims
    # The provider drops what the resource does not accept.
    assert claims["scope"].split() == ["proofs:verify", "keys:write"]


def test_tokens_with_the_scope_work_and_the_actor_is_the_client(
    real: dict[str, Any], provider: OidcProvider
) -> None:
    server: Server = real["server"]
    token = provider.token("proofs:verify anchors:read keys:write")
    r = server.client.post("/v1/verify", headers=bearer(token), json={"proofBundle": real["proof"]})
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    anchors = server.client.get("/v1/anchors", headers=bearer(token))
    assert anchors.status_code == 200, anchors.text
    assert [a["trustAnchorId"] for a in anchors.json()] == [real["anchor_id"]]
    made = server.client.post(
        "/v1/signer/keys",
        headers=bearer(token),
        json={"profile": "default", "keyId": "ci-made-key", "algorithm": "ed25519"},
    )
    assert made.status_code == 201, made.text
    with server.manager() as m:
        events = m.audit_events(AuditQuery(event_type="KEY_GENERATED", key_id="ci-made-key"))
    # No email in a client-credentials token: the identity is its sub, the client id.
    assert [e.actor for e in events] == [CLIENT_ID]


def test_a_token_without_the_scope_is_refused_403_and_audited(
    real: dict[str, Any], provider: OidcProvider
) -> None:
    server: Server = real["server"]
    token = provider.token("proofs:verify anchors:read")
    before = len(unauthorized_events(server))
    r = server.client.post(
        "/v1/signer/keys",
        headers=bearer(token),
        json={"profile": "default", "keyId": "not-allowed-key", "algorithm": "ed25519"},
    )
    assert r.status_code == 403, r.text
    assert r.json()["type"].endswith("/missing-scope")
    assert r.json()["scope"] == "keys:write"
    with server.manager() as m:
        assert all(k.key_id != "not-allowed-key" for k in m.list_keys())
    events = unauthorized_events(server)[before:]
    assert [(e.actor, e.details["reason"]) for e in events] == [(CLIENT_ID, "missing-scope")]


def test_a_token_for_another_resource_is_refused_401(
    real: dict[str, Any], provider: OidcProvider
) -> None:
    """Same provider, same client, valid signature, but issued for another API."""
    server: Server = real["server"]
    token = provider.token("proofs:verify", resource=OTHER_RESOURCE)
    assert claims_of(token)["aud"] == OTHER_RESOURCE
    before = len(unauthorized_events(server))
    r = server.client.post("/v1/verify", headers=bearer(token), json={"proofBundle": real["proof"]})
    assert r.status_code == 401, r.text
    assert r.json()["type"].endswith("/unauthenticated")
    assert r.json()["reason"] == "bad-claim"
    assert "aud" in r.json()["detail"]
    events = unauthorized_events(server)[before:]
    assert [e.details["reason"] for e in events] == ["bad-claim"]


def test_a_key_rotation_at_the_provider_is_followed(
    real: dict[str, Any], provider: OidcProvider
) -> None:
    """The provider starts signing with a new key (the old one still published): the service,
    whose cached JWKS lacks the new kid, fetches the JWKS again and accepts the token."""
    server: Server = real["server"]
    old = provider.token("proofs:verify")
    body = {"proofBundle": real["proof"]}
    assert server.client.post("/v1/verify", headers=bearer(old), json=body).status_code == 200
    provider.rotate([signing_key("op-key-2"), *provider.keys], "op-key-2")
    new = provider.token("proofs:verify")
    assert header_of(new)["kid"] == "op-key-2"
    time.sleep(REFRESH_FLOOR + 0.2)  # past the floor since the service's last fetch
    r = server.client.post("/v1/verify", headers=bearer(new), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    # The old kid is still published and still cached: its tokens keep working.
    assert server.client.post("/v1/verify", headers=bearer(old), json=body).status_code == 200

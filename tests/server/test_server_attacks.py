"""What a hostile caller tries against ``stellaops serve``: forged, stale or misdirected tokens,
missing scopes, someone else's approval, a replayed approval, hostile bodies. Each is refused
(401/403/413/422), writes nothing but the audit event of the refusal, and is counted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey

from stellakeys.audit import AuditQuery
from tests.server.server_support import (
    ALL_SCOPES,
    AUDIENCE,
    CISO,
    INITIATOR,
    ISSUER,
    LEAD,
    T0,
    Issuer,
    Server,
    unsigned_token,
)
from tests.server.test_server_api import _create, approve, bearer, signed_approval

UNAUTHORIZED = "signer.ceremony.unauthorized_access"


def _claims(who: str = "mallory@company.com") -> dict[str, Any]:
    now = int(T0.timestamp())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "email": who,
        "scope": ALL_SCOPES,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }


def _hs256_with_public_key(issuer: Issuer) -> str:
    """The classic confusion: HMAC keyed with the issuer's public key."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": issuer.key.kid}

    def seg(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{seg(header)}.{seg(_claims())}"
    secret = json.dumps(issuer.jwks()["keys"][0]).encode()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _bad_tokens(issuer: Issuer) -> dict[str, str | None]:
    stranger = ECKey.generate_key("P-256", parameters={"kid": "issuer-1"}, private=True)
    other_kid = ECKey.generate_key("P-256", parameters={"kid": "rogue"}, private=True)
    who = "mallory@company.com"
    return {
        "no-token": None,
        "expired": issuer.token(who, ALL_SCOPES, now=T0 - timedelta(hours=2)),
        "not-yet-valid": issuer.token(
            who, ALL_SCOPES, nbf=int((T0 + timedelta(hours=1)).timestamp())
        ),
        "issued-in-the-future": issuer.token(who, ALL_SCOPES, now=T0 + timedelta(hours=1)),
        "wrong-issuer": issuer.token(who, ALL_SCOPES, iss="https://evil.example.com"),
        "wrong-audience": issuer.token(who, ALL_SCOPES, aud="another-service"),
        "alg-none": unsigned_token(_claims(), {"alg": "none", "typ": "at+jwt"}),
        "hs256-public-key": _hs256_with_public_key(issuer),
        "unknown-kid": issuer.token(who, ALL_SCOPES, key=other_kid),
        "unknown-signing-key": issuer.token(who, ALL_SCOPES, key=stranger),
        "garbage": "not.a.token",
    }


# Every protected endpoint, with a body that would be accepted from an authorised caller.
def _endpoints(world: dict[str, Any]) -> list[tuple[str, str, Any]]:
    anchor = world["anchor_id"]
    return [
        ("POST", "/v1/signer/keys", {"profile": "default", "keyId": "mallory-key"}),
        ("GET", "/v1/signer/keys", None),
        ("GET", f"/v1/anchors/{anchor}", None),
        ("POST", f"/v1/anchors/{anchor}/keys", {"keyid": "spare-key", "publicKey": ""}),
        ("POST", f"/v1/anchors/{anchor}/keys/release-key/revoke", {"reason": "compromise"}),
        ("POST", "/v1/verify", {"proofBundle": world["proof"]}),
        ("GET", "/v1/audit", None),
        ("POST", "/api/v1/ceremonies", {"type": "key-rotation", "subject": "x", "payload": {}}),
        ("GET", "/api/v1/ceremonies", None),
        ("POST", "/api/v1/ceremonies/cer-x/approve", {"reason": "x", "signature": "AA=="}),
        ("POST", "/api/v1/ceremonies/cer-x/execute", None),
        ("DELETE", "/api/v1/ceremonies/cer-x", None),
    ]


def _unauthorized_count(server: Server) -> int:
    with server.manager() as m:
        return len(m.audit_events(AuditQuery(event_type=UNAUTHORIZED)))


def _state_events(server: Server) -> int:
    with server.manager() as m:
        return len([e for e in m.audit_events() if e.event_type != UNAUTHORIZED])


@pytest.mark.parametrize(
    "case",
    [
        "no-token",
        "expired",
        "not-yet-valid",
        "issued-in-the-future",
        "wrong-issuer",
        "wrong-audience",
        "alg-none",
        "hs256-public-key",
        "unknown-kid",
        "unknown-signing-key",
        "garbage",
    ],
)
def test_bad_token_is_401_on_every_endpoint(
    server: Server, issuer: Issuer, world: dict[str, Any], case: str
) -> None:
    token = _bad_tokens(issuer)[case]
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    before, writes = _unauthorized_count(server), _state_events(server)
    endpoints = _endpoints(world)
    for method, path, body in endpoints:
        r = server.client.request(method, path, headers=headers, json=body)
        assert r.status_code == 401, (case, method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/unauthenticated")
        assert "WWW-Authenticate" in r.headers
    assert _unauthorized_count(server) == before + len(endpoints)
    assert _state_events(server) == writes  # nothing else was written
    metrics = server.client.get("/metrics").text
    assert "signer_ceremony_unauthorized_access_total" in metrics


def test_valid_token_is_accepted_control(server: Server, issuer: Issuer) -> None:
    """The control for the table above: the same issuer's good token passes."""
    r = server.client.get("/v1/signer/keys", headers=bearer(issuer, "ok@company.com", "keys:read"))
    assert r.status_code == 200


def test_missing_scope_is_403_and_audited(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    h = bearer(issuer, "reader@company.com", "keys:read")  # holds only keys:read
    before = _unauthorized_count(server)
    refused = 0
    for method, path, body in _endpoints(world):
        if (method, path) in (("GET", "/v1/signer/keys"), ("DELETE", "/api/v1/ceremonies/cer-x")):
            continue
        r = server.client.request(method, path, headers=h, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["type"].endswith("/missing-scope")
        refused += 1
    with server.manager() as m:
        events = m.audit_events(AuditQuery(event_type=UNAUTHORIZED))[before:]
        assert m.list_keys() and all(k.key_id != "mallory-key" for k in m.list_keys())
    assert len(events) == refused
    assert {e.actor for e in events} == {"reader@company.com"}
    assert {e.details["reason"] for e in events} == {"missing-scope"}


def test_approving_with_someone_elses_signed_statement(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    """CISO's token cannot carry LEAD's signed approval, and LEAD's statement signed with
    CISO's key does not count for LEAD: the approver is the token's identity and the
    signature must come from that identity's registered key."""
    cid = _create(server, issuer, "root-stolen")["ceremonyId"]
    leads = signed_approval(server, issuer, world, cid, LEAD)
    r = approve(server, issuer, cid, CISO, leads)
    assert r.status_code == 403, r.text
    assert r.json()["type"].endswith("/approval-rejected")
    forged = signed_approval(server, issuer, world, cid, LEAD, signer=CISO)
    r = approve(server, issuer, cid, LEAD, forged)
    assert r.status_code == 403
    # The initiator cannot approve their own ceremony, even with the scope.
    r = server.client.post(
        f"/api/v1/ceremonies/{cid}/approve",
        headers=bearer(issuer, INITIATOR, "ceremony:approve"),
        json={"reason": "mine", "signature": leads},
    )
    assert r.status_code == 403
    with server.manager() as m:
        rejected = m.audit_events(
            AuditQuery(event_type="signer.ceremony.approval_rejected", ceremony_id=cid)
        )
        assert len(rejected) == 3
    status = server.client.get(
        f"/api/v1/ceremonies/{cid}", headers=bearer(issuer, "v@company.com", "ceremony:read")
    ).json()
    assert status["state"] == "Pending"
    assert "signer_ceremony_approval_rejected_total" in server.client.get("/metrics").text


def test_replayed_approval_counts_once(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    cid = _create(server, issuer, "root-replayed")["ceremonyId"]
    signature = signed_approval(server, issuer, world, cid, LEAD)
    assert approve(server, issuer, cid, LEAD, signature).status_code == 200
    replay = approve(server, issuer, cid, LEAD, signature)
    assert replay.status_code in (403, 409), replay.text
    status = server.client.get(
        f"/api/v1/ceremonies/{cid}", headers=bearer(issuer, "v@company.com", "ceremony:read")
    ).json()
    assert status["currentApprovals"] == 1 and status["state"] == "PartiallyApproved"


def test_unsigned_approval_is_refused(server: Server, issuer: Issuer) -> None:
    cid = _create(server, issuer, "root-unsigned")["ceremonyId"]
    r = server.client.post(
        f"/api/v1/ceremonies/{cid}/approve",
        headers=bearer(issuer, LEAD, "ceremony:approve"),
        json={"reason": "trust me"},
    )
    assert r.status_code == 403 and r.json()["code"] == "unsigned"


def test_hostile_bodies(server: Server, issuer: Issuer) -> None:
    h = {**bearer(issuer, "ops@company.com", "keys:write"), "Content-Type": "application/json"}
    big = server.client.post("/v1/signer/keys", headers=h, content=b" " * 70000 + b"{}")
    assert big.status_code == 413
    wrong = server.client.post("/v1/signer/keys", headers=h, json={"keyId": 7})
    assert wrong.status_code == 422 and wrong.json()["field"] == "keyId"
    dup = server.client.post(
        "/v1/signer/keys", headers=h, content=b'{"keyId": "a-key", "keyId": "b-key"}'
    )
    assert dup.status_code == 422 and dup.json()["type"].endswith("/duplicate-member")
    unknown = server.client.post(
        "/v1/signer/keys", headers=h, json={"keyId": "x-key", "actor": "ciso@company.com"}
    )
    assert unknown.status_code == 422 and unknown.json()["field"] == "actor"
    not_json = server.client.post("/v1/signer/keys", headers=h, content=b"{nope")
    assert not_json.status_code == 422
    with server.manager() as m:
        assert {"a-key", "b-key", "x-key"}.isdisjoint(k.key_id for k in m.list_keys())


def test_break_glass_is_audited_and_limited_to_its_scopes(
    server: Server, world: dict[str, Any]
) -> None:
    from tests.server.server_support import BREAK_GLASS_PASSWORD

    good = base64.b64encode(f"bg-oncall:{BREAK_GLASS_PASSWORD}".encode()).decode()
    h = {"Authorization": f"Basic {good}"}
    r = server.client.post("/v1/verify", headers=h, json={"proofBundle": world["proof"]})
    assert r.status_code == 200 and r.json()["ok"] is True
    with server.manager() as m:
        used = m.audit_events(AuditQuery(event_type="signer.breakglass.used"))
    assert [e.actor for e in used][-1:] == ["break-glass:bg-oncall"]
    assert "signer_breakglass_used_total 1.0" in server.client.get("/metrics").text
    # Beyond its scopes: 403.
    assert server.client.get("/v1/audit", headers=h).status_code == 403
    bad = base64.b64encode(b"bg-oncall:guess").decode()
    r = server.client.post(
        "/v1/verify", headers={"Authorization": f"Basic {bad}"}, json={"proofBundle": "x"}
    )
    assert r.status_code == 401 and r.json()["reason"] == "bad-credentials"

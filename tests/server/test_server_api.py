"""The runbooks' API against a real ``stellaops serve`` (uvicorn subprocess), driven by httpx
with tokens from a test OpenID Provider: field names as in the runbooks, the same results as
the CLI, the actor in the audit log taken from the token."""

from __future__ import annotations

import base64
from typing import Any

from stellakeys.audit import AuditQuery
from stellakeys.ceremony.statement import PAYLOAD_TYPE
from stellakeys.dsse import sign_envelope
from tests.server.server_support import (
    ALL_SCOPES,
    CISO,
    INITIATOR,
    LEAD,
    OFFICER,
    Issuer,
    Server,
)


def bearer(issuer: Issuer, who: str, scope: str = ALL_SCOPES) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(who, scope)}"}


def test_health_and_metrics_are_public(server: Server) -> None:
    assert server.client.get("/healthz").json() == {"status": "ok"}
    metrics = server.client.get("/metrics")
    assert metrics.status_code == 200
    assert "signer_keys_active_total" in metrics.text
    assert "signer_ceremony_unauthorized_access" in metrics.text


def test_verify_by_address_and_by_envelope(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    h = bearer(issuer, "ci@company.com", "proofs:verify")
    r = server.client.post("/v1/verify", headers=h, json={"proofBundle": world["proof"]})
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert r.json()["anchorId"] == world["anchor_id"]
    r = server.client.post(
        "/v1/verify",
        headers=h,
        json={"envelope": world["envelope"], "purl": "pkg:npm/left-pad@1.3.0"},
    )
    assert r.json()["ok"] is True
    # Another artifact than the statement's subject: not ok (the binding of issue 13).
    r = server.client.post(
        "/v1/verify",
        headers=h,
        json={"envelope": world["envelope"], "purl": "pkg:npm/evil@1.0.0"},
    )
    assert r.status_code == 200 and r.json()["ok"] is False
    # Before the key existed (asserted time): not ok.
    r = server.client.post(
        "/v1/verify",
        headers=h,
        json={"proofBundle": world["proof"], "atTime": "2020-01-01T00:00:00Z"},
    )
    assert r.json()["ok"] is False


def test_read_anchors_and_keys(server: Server, issuer: Issuer, world: dict[str, Any]) -> None:
    h = bearer(issuer, "reader@company.com", "anchors:read keys:read")
    anchors = server.client.get("/v1/anchors", headers=h).json()
    assert [a["trustAnchorId"] for a in anchors] == [world["anchor_id"]]
    one = server.client.get(f"/v1/anchors/{world['anchor_id']}", headers=h).json()
    assert one["purlPattern"] == "pkg:npm/*"
    assert one["allowedKeyids"] == ["release-key"]
    key = server.client.get("/v1/signer/keys/release-key", headers=h).json()
    assert key["keyId"] == "release-key" and key["publicKey"].startswith("-----BEGIN PUBLIC KEY")
    assert "private" not in str(key).lower()
    missing = server.client.get("/v1/signer/keys/nope", headers=h)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"].endswith("/not-found")


def test_generate_key_runbook_body_and_actor_from_token(server: Server, issuer: Issuer) -> None:
    r = server.client.post(
        "/v1/signer/keys",
        headers=bearer(issuer, "ops@company.com", "keys:write"),
        json={"profile": "default", "keyId": "key-2025-prod", "algorithm": "SHA256-ED25519"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["keyId"] == "key-2025-prod"
    assert r.json()["algorithm"] == "ed25519"
    with server.manager() as m:
        events = m.audit_events(AuditQuery(event_type="KEY_GENERATED", key_id="key-2025-prod"))
    assert [e.actor for e in events] == ["ops@company.com"]


def test_protected_operation_is_refused_without_a_ceremony(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    """Dual control is on: anchor add-key / revoke-key over the API are refused, as in the
    library, and nothing is written."""
    h = bearer(issuer, "ops@company.com", "anchors:write")
    r = server.client.post(
        f"/v1/anchors/{world['anchor_id']}/keys",
        headers=h,
        json={"keyid": "spare-key", "publicKey": ""},
    )
    assert r.status_code == 403, r.text
    assert r.json()["type"].endswith("/policy-refused")
    r = server.client.post(
        f"/v1/anchors/{world['anchor_id']}/keys/release-key/revoke",
        headers=h,
        json={"reason": "annual-rotation", "effectiveAt": "2025-02-01T00:00:00Z"},
    )
    assert r.status_code == 403
    with server.manager() as m:
        assert m.get_anchor(world["anchor_id"]).allowed_keyids(m.clock.now()) == ("release-key",)


def _create(server: Server, issuer: Issuer, key_id: str = "root-2026-q1") -> dict[str, Any]:
    r = server.client.post(
        "/api/v1/ceremonies",
        headers=bearer(issuer, INITIATOR, "ceremony:create"),
        json={
            "type": "key-rotation",
            "subject": "Root signing key Q1-2026",
            "threshold": 2,
            "requiredApprovers": 3,
            "expiresAt": "2026-01-17T10:00:00Z",
            "payload": {"keyId": key_id, "algorithm": "ecdsa-p384"},
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def signed_approval(
    server: Server,
    issuer: Issuer,
    world: dict[str, Any],
    ceremony_id: str,
    who: str,
    *,
    signer: str | None = None,
    reason: str = "Reviewed rotation plan, verified key parameters",
) -> str:
    """The approver asks for the statement, signs it locally (the service never sees the
    private key) and sends base64 of the DSSE envelope."""
    st = server.client.get(
        f"/api/v1/ceremonies/{ceremony_id}/statement",
        params={"reason": reason},
        headers=bearer(issuer, who, "ceremony:approve"),
    )
    assert st.status_code == 200, st.text
    assert st.json()["payloadType"] == PAYLOAD_TYPE
    key = world["approver_keys"][signer or who]
    envelope = sign_envelope(PAYLOAD_TYPE, st.json()["payload"].encode(), [key])
    return base64.b64encode(envelope.to_json()).decode()


def approve(server: Server, issuer: Issuer, ceremony_id: str, who: str, signature: str) -> Any:
    return server.client.post(
        f"/api/v1/ceremonies/{ceremony_id}/approve",
        headers=bearer(issuer, who, "ceremony:approve"),
        json={"reason": "Reviewed rotation plan, verified key parameters", "signature": signature},
    )


def test_ceremony_lifecycle_through_the_api(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    created = _create(server, issuer)
    cid = created["ceremonyId"]
    assert created["state"] == "Pending" and created["initiator"] == INITIATOR
    assert created["threshold"] == 2 and created["requiredApprovers"] == 3
    read = bearer(issuer, "viewer@company.com", "ceremony:read")
    listed = server.client.get(
        "/api/v1/ceremonies", params={"state": "pending,partially-approved"}, headers=read
    ).json()
    assert cid in [c["ceremonyId"] for c in listed]

    first = approve(server, issuer, cid, LEAD, signed_approval(server, issuer, world, cid, LEAD))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["state"] == "PartiallyApproved" and body["currentApprovals"] == 1
    assert body["approval"]["approver"] == LEAD and body["approval"]["signatureValid"] is True

    # Executing before the threshold is refused.
    early = server.client.post(
        f"/api/v1/ceremonies/{cid}/execute", headers=bearer(issuer, INITIATOR, "ceremony:execute")
    )
    assert early.status_code == 409

    second = approve(server, issuer, cid, CISO, signed_approval(server, issuer, world, cid, CISO))
    assert second.json()["state"] == "Approved"

    done = server.client.post(
        f"/api/v1/ceremonies/{cid}/execute", headers=bearer(issuer, INITIATOR, "ceremony:execute")
    )
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "Executed"
    assert done.json()["result"]["keyId"] == "root-2026-q1"
    again = server.client.post(
        f"/api/v1/ceremonies/{cid}/execute", headers=bearer(issuer, INITIATOR, "ceremony:execute")
    )
    assert again.status_code == 409
    status = server.client.get(f"/api/v1/ceremonies/{cid}", headers=read).json()
    assert status["state"] == "Executed"
    with server.manager() as m:
        approved = m.audit_events(
            AuditQuery(event_type="signer.ceremony.approved", ceremony_id=cid)
        )
    assert sorted(e.actor for e in approved) == sorted([LEAD, CISO])


def test_audit_query(server: Server, issuer: Issuer) -> None:
    h = bearer(issuer, "auditor@company.com", "audit:read")
    r = server.client.get(
        "/v1/audit", params={"eventType": "KEY_*", "from": "2025-01-01"}, headers=h
    )
    assert r.status_code == 200, r.text
    types = {e["event_type"] for e in r.json()}
    assert types and all(t.startswith("KEY_") for t in types)
    bad = server.client.get("/v1/audit", params={"limit": "0"}, headers=h)
    assert bad.status_code == 422 and bad.json()["field"] == "limit"


def test_cancel_only_by_initiator_or_cancel_scope(server: Server, issuer: Issuer) -> None:
    cid = _create(server, issuer, "root-cancelled")["ceremonyId"]
    stranger = server.client.delete(
        f"/api/v1/ceremonies/{cid}", headers=bearer(issuer, OFFICER, "ceremony:read")
    )
    assert stranger.status_code == 403, stranger.text
    ok = server.client.delete(
        f"/api/v1/ceremonies/{cid}", headers=bearer(issuer, INITIATOR, "ceremony:read")
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["state"] == "Cancelled"

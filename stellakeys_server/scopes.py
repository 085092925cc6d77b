"""One table: each endpoint and the scope its caller's token must hold (docs/server.md shows
the same table; tests/server checks that the two agree and that the app serves exactly these).

``None`` means authenticated, with the decision left to the library: cancelling a ceremony is
allowed to its initiator or to holders of ``ceremony:cancel`` (the ceremony runbook), which
only the ceremony service can tell. ``PUBLIC`` endpoints need no token.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PUBLIC", "ROUTES", "SCOPES"]

PUBLIC: Final = "public"

KEYS_READ = "keys:read"
KEYS_WRITE = "keys:write"
ANCHORS_READ = "anchors:read"
ANCHORS_WRITE = "anchors:write"
PROOFS_VERIFY = "proofs:verify"
AUDIT_READ = "audit:read"
CEREMONY_READ = "ceremony:read"
CEREMONY_CREATE = "ceremony:create"
CEREMONY_APPROVE = "ceremony:approve"
CEREMONY_EXECUTE = "ceremony:execute"
CEREMONY_CANCEL = "ceremony:cancel"

SCOPES = frozenset(
    {
        KEYS_READ,
        KEYS_WRITE,
        ANCHORS_READ,
        ANCHORS_WRITE,
        PROOFS_VERIFY,
        AUDIT_READ,
        CEREMONY_READ,
        CEREMONY_CREATE,
        CEREMONY_APPROVE,
        CEREMONY_EXECUTE,
        CEREMONY_CANCEL,
    }
)

#: (method, path) -> scope. The paths of the runbooks are kept as written there.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", "/v1/signer/keys"): KEYS_WRITE,
    ("GET", "/v1/signer/keys"): KEYS_READ,
    ("GET", "/v1/signer/keys/{keyId}"): KEYS_READ,
    ("GET", "/v1/anchors"): ANCHORS_READ,
    ("GET", "/v1/anchors/{anchorId}"): ANCHORS_READ,
    ("POST", "/v1/anchors/{anchorId}/keys"): ANCHORS_WRITE,
    ("POST", "/v1/anchors/{anchorId}/keys/{keyId}/revoke"): ANCHORS_WRITE,
    ("POST", "/v1/verify"): PROOFS_VERIFY,
    ("GET", "/v1/audit"): AUDIT_READ,
    ("POST", "/api/v1/ceremonies"): CEREMONY_CREATE,
    ("GET", "/api/v1/ceremonies"): CEREMONY_READ,
    ("GET", "/api/v1/ceremonies/{ceremonyId}"): CEREMONY_READ,
    ("GET", "/api/v1/ceremonies/{ceremonyId}/statement"): CEREMONY_APPROVE,
    ("POST", "/api/v1/ceremonies/{ceremonyId}/approve"): CEREMONY_APPROVE,
    ("POST", "/api/v1/ceremonies/{ceremonyId}/execute"): CEREMONY_EXECUTE,
    ("DELETE", "/api/v1/ceremonies/{ceremonyId}"): None,
}

"""The cache of validated bearer tokens (stellakeys_server.auth.TokenCache) must never widen
what is accepted: an expired or not-yet-valid token is refused even when cached, a token that
failed any check is never cached, a JWKS reload or the TTL sends the token back to full
validation, and scopes are still checked per endpoint on a cached token."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from stellakeys.audit import AuditQuery
from stellakeys.clock import FrozenClock
from stellakeys_server.auth import (
    TOKEN_CACHE_TTL_SECONDS,
    Authenticator,
    AuthError,
    Principal,
    TokenCache,
)
from stellakeys_server.config import OidcConfig, ServerConfig
from tests.server.server_support import AUDIENCE, ISSUER, T0, Issuer, Server

WHO = "alice@company.com"


class Ticker:
    """A hand-driven monotonic clock for the cache's TTL (real time in production)."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def _authenticator(
    tmp_path: Path, issuer: Issuer, clock: FrozenClock, cache: TokenCache | None = None
) -> Authenticator:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    # refresh floor 0: an unknown kid reloads the JWKS at once (the rotation test needs it).
    oidc = OidcConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks, leeway_seconds=30, refresh_floor_seconds=0
    )
    return Authenticator(ServerConfig(oidc=oidc), clock, cache)


def _refused(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        auth.authenticate(f"Bearer {token}")
    return caught.value.code


def test_a_valid_token_is_cached_and_answered_from_the_cache(
    tmp_path: Path, issuer: Issuer
) -> None:
    auth = _authenticator(tmp_path, issuer, FrozenClock(T0))
    token = issuer.token(WHO, "proofs:verify")
    assert auth.cached(f"Bearer {token}") is None  # never seen
    first = auth.authenticate(f"Bearer {token}")
    assert first == Principal(WHO, frozenset({"proofs:verify"}), "oidc")
    assert len(auth.token_cache) == 1
    assert auth.cached(f"Bearer {token}") == first
    assert auth.cached(f"bearer  {token} ") == first  # the same header normalisation
    # Not keyed loosely: another token of the same subject is not a hit.
    other = issuer.token(WHO, "proofs:verify audit:read")
    assert auth.cached(f"Bearer {other}") is None


def test_an_expired_cached_token_is_refused(tmp_path: Path, issuer: Issuer) -> None:
    clock = FrozenClock(T0)
    auth = _authenticator(tmp_path, issuer, clock)
    token = issuer.token(WHO, "proofs:verify", lifetime=timedelta(minutes=10))
    auth.authenticate(f"Bearer {token}")
    assert auth.cached(f"Bearer {token}") is not None
    # Within the leeway (30 s) past exp: still good, as the full validation says.
    clock.set(T0 + timedelta(minutes=10, seconds=29))
    assert auth.cached(f"Bearer {token}") is not None
    clock.set(T0 + timedelta(minutes=10, seconds=31))
    assert auth.cached(f"Bearer {token}") is None
    assert _refused(auth, token) == "expired"
    assert len(auth.token_cache) == 0


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_cached_token_is_refused_before_its_nbf_or_iat(
    tmp_path: Path, issuer: Issuer, claim: str
) -> None:
    clock = FrozenClock(T0 + timedelta(minutes=3))
    auth = _authenticator(tmp_path, issuer, clock)
    if claim == "nbf":  # issued at T0, not valid before T0 + 2 min
        token = issuer.token(WHO, "proofs:verify", nbf=int((T0 + timedelta(minutes=2)).timestamp()))
    else:  # issued at T0 + 2 min, no nbf
        token = issuer.token(WHO, "proofs:verify", now=T0 + timedelta(minutes=2), nbf=None)
    auth.authenticate(f"Bearer {token}")
    assert auth.cached(f"Bearer {token}") is not None
    # The clock is set back (an NTP correction) to T0 + 1 min: past the leeway before the
    # claim, so the cache must refuse it as the full validation does.
    clock.set(T0 + timedelta(minutes=1))
    assert auth.cached(f"Bearer {token}") is None
    assert _refused(auth, token) == "bad-claim"


@pytest.mark.parametrize("case", ["tampered-signature", "stranger-key", "wrong-audience"])
def test_a_refused_token_is_never_cached(tmp_path: Path, issuer: Issuer, case: str) -> None:
    auth = _authenticator(tmp_path, issuer, FrozenClock(T0))
    good = issuer.token(WHO, "proofs:verify")
    if case == "tampered-signature":
        head, body, sig = good.split(".")
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[5] ^= 0x01
        token = f"{head}.{body}." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    elif case == "stranger-key":  # same kid, another key: the signature does not verify
        stranger = ECKey.generate_key("P-256", parameters={"kid": "issuer-1"}, private=True)
        token = issuer.token(WHO, "proofs:verify", key=stranger)
    else:  # a good signature, a claim that fails
        token = issuer.token(WHO, "proofs:verify", aud="another-service")
    for _ in range(2):  # refused again, not remembered
        assert _refused(auth, token) in {"bad-signature", "bad-claim"}
        assert auth.cached(f"Bearer {token}") is None
    assert len(auth.token_cache) == 0


def test_the_ttl_sends_a_token_back_to_full_validation(tmp_path: Path, issuer: Issuer) -> None:
    ticker = Ticker()
    cache = TokenCache(monotonic=ticker)
    auth = _authenticator(tmp_path, issuer, FrozenClock(T0), cache)
    token = issuer.token(WHO, "proofs:verify", lifetime=timedelta(hours=1))
    auth.authenticate(f"Bearer {token}")
    ticker.value += TOKEN_CACHE_TTL_SECONDS - 1
    assert auth.cached(f"Bearer {token}") is not None
    ticker.value += 1
    assert auth.cached(f"Bearer {token}") is None  # validated in full again, then cached again
    assert auth.authenticate(f"Bearer {token}").identity == WHO
    assert auth.cached(f"Bearer {token}") is not None


def test_a_jwks_reload_invalidates_cached_tokens(tmp_path: Path, issuer: Issuer) -> None:
    auth = _authenticator(tmp_path, issuer, FrozenClock(T0))
    old = issuer.token(WHO, "proofs:verify")
    auth.authenticate(f"Bearer {old}")
    assert auth.cached(f"Bearer {old}") is not None
    # The issuer rotates: issuer-1 is withdrawn, issuer-2 published. The first token naming
    # issuer-2 reloads the JWKS ...
    rotated = Issuer()
    rotated.key = ECKey.generate_key("P-256", parameters={"kid": "issuer-2"}, private=True)
    (tmp_path / "jwks.json").write_text(json.dumps(rotated.jwks()))
    assert auth.authenticate(f"Bearer {rotated.token(WHO, 'proofs:verify')}").identity == WHO
    # ... and the token validated with the withdrawn key is no longer answered from the cache.
    assert auth.cached(f"Bearer {old}") is None
    assert _refused(auth, old) == "unknown-key"


def test_the_cache_is_bounded(tmp_path: Path, issuer: Issuer) -> None:
    auth = _authenticator(tmp_path, issuer, FrozenClock(T0), TokenCache(max_entries=3))
    tokens = [issuer.token(f"user{i}@company.com", "proofs:verify") for i in range(5)]
    for token in tokens:
        auth.authenticate(f"Bearer {token}")
    assert len(auth.token_cache) == 3
    assert [auth.cached(f"Bearer {t}") is not None for t in tokens] == [False] * 2 + [True] * 3


def test_break_glass_is_never_cached(tmp_path: Path, issuer: Issuer) -> None:
    auth = _authenticator(tmp_path, issuer, FrozenClock(T0))
    basic = "Basic " + base64.b64encode(b"nobody:wrong").decode()
    assert auth.cached(basic) is None
    with pytest.raises(AuthError):
        auth.authenticate(basic)
    assert len(auth.token_cache) == 0


def _post_verify(server: Server, token: str, proof: str) -> Any:
    return server.client.post(
        "/v1/verify",
        headers={"Authorization": f"Bearer {token}"},
        json={"proofBundle": proof},
    )


def test_a_cached_token_still_needs_each_endpoints_scope(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    token = issuer.token("verifier-only@company.com", "proofs:verify")
    for _ in range(3):  # the second and third are answered from the service's cache
        r = _post_verify(server, token, world["proof"])
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True
    with server.manager() as m:
        before = len(m.audit_events(AuditQuery(event_type="signer.ceremony.unauthorized_access")))
    for path in ("/v1/audit", "/v1/signer/keys"):
        r = server.client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403, r.text
        assert r.json()["type"].endswith("/missing-scope")
    r = server.client.post(
        "/v1/signer/keys",
        headers={"Authorization": f"Bearer {token}"},
        json={"profile": "default", "keyId": "not-allowed-key"},
    )
    assert r.status_code == 403, r.text
    with server.manager() as m:
        events = m.audit_events(AuditQuery(event_type="signer.ceremony.unauthorized_access"))
        assert len(events) == before + 3  # each refusal audited, cache or not
        assert all(k.key_id != "not-allowed-key" for k in m.list_keys())


def test_a_forged_token_is_refused_after_the_genuine_one_was_cached(
    server: Server, issuer: Issuer, world: dict[str, Any]
) -> None:
    token = issuer.token("verifier-2@company.com", "proofs:verify")
    assert _post_verify(server, token, world["proof"]).status_code == 200
    # Same header and claims with more scopes, the original signature: not the cached string.
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["scope"] = "proofs:verify keys:write audit:read"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{head}.{forged_body}.{sig}"
    r = server.client.get("/v1/audit", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401, r.text
    assert r.json()["reason"] == "bad-signature"

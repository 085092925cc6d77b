"""Who is calling: an OIDC bearer token (RFC 9068 JWT access token) or a break-glass account.

Tokens are verified against the issuer's JWKS (from ``jwksFile``, ``jwksUri`` or the issuer's
discovery document), cached and fetched again when a token names an unknown ``kid``, at most
once per refresh floor (an attacker sending random ``kid`` values cannot make us hammer the
issuer). Checked: signature with an allow-listed asymmetric algorithm (never ``none``, never
HMAC), ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` against the injected clock with a small
leeway. The identity is the token's ``email``, else its ``sub``; scopes are the ``scope``
claim. Nothing the request body says changes who the caller is.

A token that passed all of that is remembered (:class:`TokenCache`, keyed by the SHA-256 of
the exact token string) so that the next request bearing it skips the ES256 verification and
claim parsing: answered from the cache for at most ``TOKEN_CACHE_TTL_SECONDS`` of real time,
only while the JWKS that validated it is still the one in use, and with ``exp``/``nbf``/``iat``
checked against the clock again on every hit. Anything else is validated in full.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs
import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from stellakeys.clock import Clock
from stellakeys_server.config import (
    MAX_BREAK_GLASS_LIFETIME_DAYS,
    BreakGlassAccount,
    OidcConfig,
    ServerConfig,
)

__all__ = ["AuthError", "Authenticator", "Principal", "TokenCache", "hash_password"]

_ACCEPTED_TYP = {None, "at+jwt", "application/at+jwt", "JWT"}
#: How long (real time) a validated token is answered from the cache before it is validated
#: again in full; short, so that a JWKS rotation or a change of policy shows soon.
TOKEN_CACHE_TTL_SECONDS = 60.0
#: At most this many validated tokens are remembered (the oldest is forgotten first).
TOKEN_CACHE_SIZE = 4096


@attrs.frozen
class Principal:
    identity: str
    scopes: frozenset[str]
    #: "oidc" or "break-glass"
    method: str


class AuthError(Exception):
    """Authentication failed: ``code`` is the stable reason (audited, a metric label)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- break-glass password hashes (scrypt) -----------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1


def hash_password(password: str) -> str:
    """A slow hash for a break-glass account's ``passwordHash``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, expected = stored.split("$")
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected) // 2,
            maxmem=256 << 20,
        )
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


# --- JWKS ---------------------------------------------------------------------------------------


class JwksSource:
    """The issuer's keys, cached; refreshed on an unknown ``kid`` no more often than the floor."""

    def __init__(self, config: OidcConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None  # monotonic: a rate limit, not a date
        #: Bumped each time another key set is loaded: cached tokens validated with an older
        #: one are validated again.
        self.generation = 0

    def _load(self) -> KeySet:
        cfg = self._config
        if cfg.jwks_file is not None:
            document = json.loads(cfg.jwks_file.read_text(encoding="utf-8"))
        else:
            uri = cfg.jwks_uri
            with httpx.Client(timeout=10.0, follow_redirects=False) as client:
                if uri is None:
                    discovery = client.get(
                        cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
                    )
                    discovery.raise_for_status()
                    meta = discovery.json()
                    if meta.get("issuer") != cfg.issuer:
                        raise AuthError("jwks-unavailable", "discovery names another issuer")
                    uri = meta.get("jwks_uri")
                    if not isinstance(uri, str):
                        raise AuthError("jwks-unavailable", "discovery has no jwks_uri")
                response = client.get(uri)
                response.raise_for_status()
                document = response.json()
        # Only asymmetric public keys: an "oct" key in a JWKS would enable HMAC forgeries.
        keys = [
            k for k in document.get("keys", []) if isinstance(k, dict) and k.get("kty") != "oct"
        ]
        return KeySet.import_key_set({"keys": keys})

    def keys(self, kid: str | None) -> KeySet:
        return self.keys_and_generation(kid)[0]

    def keys_and_generation(self, kid: str | None) -> tuple[KeySet, int]:
        with self._lock:
            now = time.monotonic()
            stale = self._keys is None or (
                kid is not None
                and not any(k.kid == kid for k in self._keys.keys)
                and (
                    self._fetched_at is None
                    or now - self._fetched_at >= self._config.refresh_floor_seconds
                )
            )
            if stale:
                try:
                    self._keys = self._load()
                    self.generation += 1
                except (OSError, ValueError, httpx.HTTPError, JoseError) as exc:
                    if self._keys is None:
                        raise AuthError(
                            "jwks-unavailable", f"cannot read the issuer's keys: {exc}"
                        ) from None
                self._fetched_at = now
            assert self._keys is not None
            return self._keys, self.generation


# --- validated tokens ---------------------------------------------------------------------------


@attrs.frozen
class _Validated:
    principal: Principal
    exp: float
    nbf: float | None
    iat: float | None
    generation: int  # of the JWKS that validated it
    stored_at: float  # monotonic


class TokenCache:
    """Bearer tokens that passed full validation, keyed by the SHA-256 of the exact token.

    Only a successful validation is stored (a bad signature, a wrong issuer, an expired token
    never is). A hit is answered only if the entry is younger than ``ttl_seconds`` (real time),
    the JWKS generation is still the one that validated it, and ``exp``/``nbf``/``iat`` still
    hold at ``now`` with the leeway; otherwise the entry is dropped and the caller validates in
    full (which then names the precise failure). Bounded: the oldest entry goes first.
    Thread-safe: hits are served on the event loop, stores come from the thread pool.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = TOKEN_CACHE_TTL_SECONDS,
        max_entries: int = TOKEN_CACHE_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Validated] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        # A digest, not the token: no token-dependent string compare, 32 bytes per entry.
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: int, leeway: float, generation: int) -> Principal | None:
        """``now``: the clock's time in whole seconds, as the full validation uses it."""
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if (
                self._monotonic() - entry.stored_at >= self._ttl
                or entry.generation != generation
                or entry.exp <= now - leeway
                or (entry.nbf is not None and entry.nbf > now + leeway)
                or (entry.iat is not None and entry.iat > now + leeway)
            ):
                del self._entries[key]
                return None
            return entry.principal

    def put(
        self,
        token: str,
        principal: Principal,
        *,
        exp: float,
        nbf: float | None,
        iat: float | None,
        generation: int,
    ) -> None:
        """Remember ``token``: call only after it passed every check."""
        key = self._key(token)
        validated = _Validated(principal, exp, nbf, iat, generation, self._monotonic())
        with self._lock:
            self._entries[key] = validated
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


class Authenticator:
    def __init__(
        self, config: ServerConfig, clock: Clock, token_cache: TokenCache | None = None
    ) -> None:
        self._config = config
        self._clock = clock
        self._jwks = JwksSource(config.oidc) if config.oidc is not None else None
        self._accounts: Mapping[str, BreakGlassAccount] = {a.name: a for a in config.break_glass}
        self.token_cache = token_cache if token_cache is not None else TokenCache()

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal of a bearer token validated before and still good, else None (then
        call :meth:`authenticate`). Cheap and non-blocking: the app calls it on the event loop.
        Break-glass credentials are never cached (each use is a slow hash and an audit event)."""
        cfg = self._config.oidc
        if not authorization or cfg is None or self._jwks is None:
            return None
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return None
        return self.token_cache.get(
            credentials.strip(),
            int(self._clock.now().timestamp()),
            cfg.leeway_seconds,
            self._jwks.generation,
        )

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing-token", "an Authorization: Bearer token is required")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return self._bearer(credentials.strip())
        if scheme.lower() == "basic" and credentials and self._accounts:
            return self._break_glass(credentials.strip())
        raise AuthError("bad-scheme", "use Authorization: Bearer <access token>")

    def _bearer(self, token: str) -> Principal:
        cfg = self._config.oidc
        if cfg is None or self._jwks is None:
            raise AuthError("oidc-disabled", "bearer tokens are not configured on this server")
        now = int(self._clock.now().timestamp())
        hit = self.token_cache.get(token, now, cfg.leeway_seconds, self._jwks.generation)
        if hit is not None:
            return hit
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError("malformed-token", "not a compact JWS")
        try:
            header = _b64json(parts[0])
        except (ValueError, UnicodeError):
            raise AuthError("malformed-token", "unreadable token header") from None
        if not isinstance(header, dict):
            raise AuthError("malformed-token", "unreadable token header")
        # Checked before any key is touched: no "none", no HMAC, only the allow-list.
        if header.get("alg") not in cfg.algorithms:
            raise AuthError("bad-algorithm", f"algorithm {header.get('alg')!r} is not allowed")
        if header.get("typ") not in _ACCEPTED_TYP:
            raise AuthError("bad-type", f"token type {header.get('typ')!r} is not an access token")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed-token", "kid must be a string")
        keys, generation = self._jwks.keys_and_generation(kid)
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            raise AuthError("unknown-key", "the token's kid is not in the issuer's keys")
        try:
            decoded = jwt.decode(token, keys, algorithms=list(cfg.algorithms))
        except JoseError as exc:
            raise AuthError("bad-signature", f"token signature: {exc.error}") from None
        except (ValueError, TypeError):
            raise AuthError("malformed-token", "unreadable token") from None
        claims = decoded.claims
        registry = JWTClaimsRegistry(
            now=now,
            leeway=cfg.leeway_seconds,
            iss={"essential": True, "value": cfg.issuer},
            aud={"essential": True, "value": cfg.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            code = {"expired_token": "expired", "invalid_claim": "bad-claim"}.get(
                exc.error, "bad-claim"
            )
            raise AuthError(code, f"token claims: {exc.description or exc.error}") from None
        iat = claims.get("iat")
        if iat is not None and (not isinstance(iat, int | float) or iat > now + cfg.leeway_seconds):
            raise AuthError("bad-claim", "token issued in the future (iat)")
        identity = claims.get("email") or claims.get("sub")
        if not isinstance(identity, str) or not identity.strip():
            raise AuthError("bad-claim", "token names no identity (email or sub)")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise AuthError("bad-claim", "scope must be a space-separated string")
        principal = Principal(identity, frozenset(scope.split()), "oidc")
        nbf = claims.get("nbf")
        # Reached only when every check above passed: the registry validated exp (required)
        # and nbf as numbers, iat was checked above.
        self.token_cache.put(
            token,
            principal,
            exp=float(claims["exp"]),
            nbf=float(nbf) if nbf is not None else None,
            iat=float(iat) if iat is not None else None,
            generation=generation,
        )
        return principal

    def _break_glass(self, credentials: str) -> Principal:
        try:
            name, sep, password = (
                base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            )
        except (ValueError, UnicodeError):
            raise AuthError("malformed-credentials", "unreadable Basic credentials") from None
        account = self._accounts.get(name) if sep else None
        # Hash even for an unknown name, so timing does not tell which names exist.
        stored = account.password_hash if account is not None else _DUMMY_HASH
        good = _check_password(password, stored)
        if account is None or not good:
            raise AuthError("bad-credentials", "break-glass credentials refused")
        now = self._clock.now()
        if now >= account.valid_until:
            raise AuthError("expired", f"break-glass account {name} expired")
        if account.valid_until - now > timedelta(days=MAX_BREAK_GLASS_LIFETIME_DAYS):
            raise AuthError(
                "bad-credentials",
                f"break-glass account {name} is valid for more than"
                f" {MAX_BREAK_GLASS_LIFETIME_DAYS} days: refused (short-lived only)",
            )
        return Principal(f"break-glass:{name}", account.scopes, "break-glass")


_DUMMY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32

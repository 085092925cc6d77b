"""The ``server:`` section of signer.yaml, parsed strictly: an unknown key is an error naming it
(a misspelt ``audience`` must not silently turn a check off).

.. code-block:: yaml

    server:
      oidc:
        issuer: https://id.example.com/realms/stella
        audience: stellaops-signer
        jwksUri: https://id.example.com/realms/stella/certs   # or jwksFile, else discovery
        algorithms: [ES256, EdDSA, RS256]                     # default: these three
        leewaySeconds: 30
        jwksRefreshFloorSeconds: 60
      breakGlass:
        enabled: false
        accounts:
          - name: bg-oncall
            passwordHash: "scrypt$16384$8$1$<salt hex>$<hash hex>"
            scopes: [ceremony:cancel, keys:write]
            validUntil: "2026-01-17T10:00:00Z"
      maxBodyBytes: 1048576
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from stellakeys.errors import ConfigError
from stellakeys.times import parse_time

__all__ = ["BreakGlassAccount", "OidcConfig", "ServerConfig"]

#: Asymmetric algorithms only: an HMAC algorithm would let anyone holding the (public) JWKS
#: forge tokens, and ``none`` is no signature at all.
SAFE_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
DEFAULT_ALGORITHMS = ("ES256", "EdDSA", "RS256")
#: Break-glass credentials are short-lived: one valid longer than this is refused at start.
MAX_BREAK_GLASS_LIFETIME_DAYS = 7


def _mapping(value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise ConfigError(f"{where} must be a non-empty string")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where} must be an integer in {low}..{high}")
    return value


@attrs.frozen
class OidcConfig:
    issuer: str
    audience: str
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: int = 30
    refresh_floor_seconds: int = 60

    @classmethod
    def from_dict(cls, value: Any, base_dir: Path) -> OidcConfig:
        where = "server.oidc"
        doc = _mapping(
            value,
            where,
            {
                "issuer",
                "audience",
                "jwksUri",
                "jwksFile",
                "algorithms",
                "leewaySeconds",
                "jwksRefreshFloorSeconds",
            },
        )
        for required in ("issuer", "audience"):
            if required not in doc:
                raise ConfigError(f"{where}.{required} is required")
        issuer = _text(doc["issuer"], f"{where}.issuer")
        if not issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigError(f"{where}.issuer must be an https:// URL (or a loopback http one)")
        if "jwksUri" in doc and "jwksFile" in doc:
            raise ConfigError(f"{where}: give jwksUri or jwksFile, not both")
        algorithms = doc.get("algorithms", list(DEFAULT_ALGORITHMS))
        if not isinstance(algorithms, list) or not algorithms:
            raise ConfigError(f"{where}.algorithms must be a non-empty list")
        for alg in algorithms:
            if alg not in SAFE_ALGORITHMS:
                raise ConfigError(
                    f"{where}.algorithms: {alg!r} is not allowed"
                    f" (asymmetric only: {', '.join(sorted(SAFE_ALGORITHMS))})"
                )
        jwks_file = doc.get("jwksFile")
        return cls(
            issuer=issuer,
            audience=_text(doc["audience"], f"{where}.audience"),
            jwks_uri=_text(doc["jwksUri"], f"{where}.jwksUri") if "jwksUri" in doc else None,
            jwks_file=(base_dir / _text(jwks_file, f"{where}.jwksFile")) if jwks_file else None,
            algorithms=tuple(algorithms),
            leeway_seconds=_int(doc.get("leewaySeconds", 30), f"{where}.leewaySeconds", 0, 300),
            refresh_floor_seconds=_int(
                doc.get("jwksRefreshFloorSeconds", 60), f"{where}.jwksRefreshFloorSeconds", 1, 3600
            ),
        )


@attrs.frozen
class BreakGlassAccount:
    name: str
    password_hash: str = attrs.field(repr=False)
    scopes: frozenset[str]
    valid_until: datetime


@attrs.frozen
class ServerConfig:
    oidc: OidcConfig | None
    break_glass: tuple[BreakGlassAccount, ...] = ()
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_document(cls, document: Mapping[str, Any], base_dir: Path) -> ServerConfig:
        section = document.get("server")
        if section is None:
            raise ConfigError(
                "signer.yaml has no server: section (server.oidc.issuer and"
                " server.oidc.audience are required to serve; see docs/server.md)"
            )
        doc = _mapping(section, "server", {"oidc", "breakGlass", "maxBodyBytes"})
        oidc = OidcConfig.from_dict(doc["oidc"], base_dir) if "oidc" in doc else None
        accounts = _break_glass(doc.get("breakGlass"))
        if oidc is None and not accounts:
            raise ConfigError("server: configure server.oidc (or break-glass accounts)")
        return cls(
            oidc=oidc,
            break_glass=accounts,
            max_body_bytes=_int(
                doc.get("maxBodyBytes", 1 << 20), "server.maxBodyBytes", 1024, 64 << 20
            ),
        )


def _break_glass(value: Any) -> tuple[BreakGlassAccount, ...]:
    if value is None:
        return ()
    doc = _mapping(value, "server.breakGlass", {"enabled", "accounts"})
    if doc.get("enabled", False) is not True:
        if doc.get("enabled", False) is not False:
            raise ConfigError("server.breakGlass.enabled must be true or false")
        return ()
    raw = doc.get("accounts")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("server.breakGlass.accounts must be a non-empty list when enabled")
    accounts: list[BreakGlassAccount] = []
    for i, item in enumerate(raw):
        where = f"server.breakGlass.accounts[{i}]"
        entry = _mapping(item, where, {"name", "passwordHash", "scopes", "validUntil"})
        for required in ("name", "passwordHash", "scopes", "validUntil"):
            if required not in entry:
                raise ConfigError(f"{where}.{required} is required (break-glass is short-lived)")
        password_hash = _text(entry["passwordHash"], f"{where}.passwordHash")
        if not password_hash.startswith("scrypt$") or password_hash.count("$") != 5:
            raise ConfigError(
                f"{where}.passwordHash must be a scrypt hash"
                " (stellaops serve hash-password makes one); plain passwords are refused"
            )
        scopes = entry["scopes"]
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"{where}.scopes must be a list of scope names")
        valid_until = entry["validUntil"]
        if isinstance(valid_until, datetime):
            raise ConfigError(f"{where}.validUntil must be a quoted ISO 8601 string")
        try:
            until = parse_time(_text(valid_until, f"{where}.validUntil"))
        except ValueError as exc:
            raise ConfigError(f"{where}.validUntil: {exc}") from None
        accounts.append(
            BreakGlassAccount(
                name=_text(entry["name"], f"{where}.name"),
                password_hash=password_hash,
                scopes=frozenset(scopes),
                valid_until=until,
            )
        )
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigError("server.breakGlass.accounts: duplicate name")
    return tuple(accounts)

"""docs/server.md's scope table is the code's (stellakeys_server.scopes.ROUTES), and the
break-glass / config parsing refuses what it must."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stellakeys.errors import ConfigError
from stellakeys_server.config import ServerConfig
from stellakeys_server.scopes import PUBLIC, ROUTES

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def test_doc_table_matches_code() -> None:
    rows = re.findall(r"^\| (GET|POST|DELETE) \| `([^`]+)` \| (.+?) \|$", DOC.read_text(), re.M)
    documented = {}
    for method, path, scope in rows:
        scope = scope.strip("`")
        documented[(method, path)] = (
            None if scope.startswith("the initiator") else PUBLIC if scope == "public" else scope
        )
    assert documented == ROUTES


OIDC = {"issuer": "https://id.example.com", "audience": "a"}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"oidc": {**OIDC, "audiance": "x"}}, "unknown key 'audiance'"),
        ({"oidc": {**OIDC, "algorithms": ["HS256"]}}, "'HS256' is not allowed"),
        ({"oidc": {**OIDC, "algorithms": ["none"]}}, "'none' is not allowed"),
        ({"oidc": {"issuer": "https://id.example.com"}}, "audience is required"),
        ({"oidc": {**OIDC, "issuer": "http://id.example.com"}}, "https"),
        (
            {
                "breakGlass": {
                    "enabled": True,
                    "accounts": [
                        {
                            "name": "bg",
                            "passwordHash": "hunter2",
                            "scopes": [],
                            "validUntil": "2026-01-17T00:00:00Z",
                        }
                    ],
                }
            },
            "scrypt",
        ),
        ({"breakGlass": {"enabled": True, "accounts": [{"name": "bg"}]}}, "is required"),
        ({"oidc": OIDC, "port": 1}, "unknown key 'port'"),
    ],
)
def test_config_refuses(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServerConfig.from_document({"server": section}, Path("."))

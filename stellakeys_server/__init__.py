"""The signer service: the runbooks' HTTP API over the stellakeys library (layer 8, an edge).

It parses HTTP, authenticates (OIDC bearer tokens, break-glass), authorizes by scope and
calls the library through :mod:`stellakeys_server.actions`, the same calls the CLI makes.
Installed with the ``server`` extra; started by ``stellaops serve``. See docs/server.md.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str) -> object:
    # Importing the package does not import FastAPI (``stellaops --help`` stays fast).
    if name == "create_app":
        from stellakeys_server.app import create_app

        return create_app
    raise AttributeError(name)

"""``stellaops serve``: the signer service (the runbooks' HTTP API) on uvicorn.

Needs the ``server`` extra (``pip install 'stellakeys[server]'``) and a ``server:`` section in
signer.yaml (docs/server.md).
"""

from __future__ import annotations

import sys

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--hash-password",
    is_flag=True,
    help="Read a break-glass password on stdin, print its passwordHash, and exit.",
)
def serve(host: str, port: int, hash_password: bool) -> None:
    """Serve the signer API (keys, anchors, verify, audit, ceremonies) with OIDC auth."""
    try:
        import uvicorn

        from stellakeys_server.app import create_app
        from stellakeys_server.auth import hash_password as make_hash
    except ImportError as exc:
        raise click.ClickException(
            f"the signer service needs the server extra ({exc.name} is missing):"
            " pip install 'stellakeys[server]'"
        ) from None
    if hash_password:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 16:
            raise click.UsageError("a break-glass password needs at least 16 characters")
        click.echo(make_hash(password))
        return
    from stellakeys.config import load_settings
    from stellakeys_cli.context import state

    st = state()
    settings = load_settings(st.home, st.config_path, st.database_url, st.actor)
    app = create_app(settings, st.clock)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)

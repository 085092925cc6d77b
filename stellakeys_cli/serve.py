"""``stellaops serve``: the signer service (the runbooks' HTTP API) on uvicorn.

Needs the ``server`` extra (``pip install 'stellakeys[server]'``) and a ``server:`` section in
signer.yaml (docs/server.md).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

#: What a worker process needs to build the same application as the parent (set by the parent
#: for ``--workers N``: uvicorn's workers are new interpreters that import an app factory).
_WORKER_ENV = "STELLAKEYS_SERVE_WORKER"


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (uvicorn); each opens its own store. About one per core.",
)
@click.option(
    "--hash-password",
    is_flag=True,
    help="Read a break-glass password on stdin, print its passwordHash, and exit.",
)
def serve(host: str, port: int, workers: int, hash_password: bool) -> None:
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
    from stellakeys_cli.collector import settled
    from stellakeys_cli.context import state

    st = state()
    settings = load_settings(st.home, st.config_path, st.database_url, st.actor)
    if workers == 1:
        app = create_app(settings, st.clock)
        settled()  # a long-running process: collect as usual from here (decision 0033)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
        return
    # Built once here first, so a bad configuration is this command's one-line error, not
    # a traceback in every worker; then closed (each worker opens its own store).
    create_app(settings, st.clock).state.service.lib.close()
    settled()
    os.environ[_WORKER_ENV] = json.dumps(
        {
            "home": str(settings.home),
            "config": st.config_path,
            "database": st.database_url,
            "actor": st.actor,
        }
    )
    uvicorn.run(
        "stellakeys_cli.serve:worker_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="info",
        access_log=True,
    )


def worker_app() -> Any:
    """The application of one ``--workers`` process: the parent's settings (from the
    environment it set) and this process's clock (``STELLAKEYS_TEST_NOW`` is inherited)."""
    from stellakeys.config import load_settings
    from stellakeys_cli.context import cli_clock
    from stellakeys_server.app import create_app

    given = json.loads(os.environ[_WORKER_ENV])
    settings = load_settings(given["home"], given["config"], given["database"], given["actor"])
    return create_app(settings, cli_clock())

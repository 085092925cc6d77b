"""``stellaops metrics serve`` and ``stellaops metrics show``."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import click

from stellakeys_cli.context import emit_json, json_option, manager


@click.group()
def metrics() -> None:
    """Prometheus metrics of the key rotation runbook."""


@metrics.command("serve")
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--addr",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 for every interface).",
)
def serve(port: int, addr: str) -> None:
    """Serve /metrics over HTTP until interrupted (SIGINT or SIGTERM)."""
    from prometheus_client import start_http_server

    from stellakeys.metrics import registry_for

    registry = registry_for(manager())
    server, thread = start_http_server(port, addr=addr, registry=registry)
    host, bound = server.server_address[:2]
    if isinstance(host, bytes):
        host = host.decode()
    # The bound port matters with --port 0 (tests, ad-hoc runs): say where we listen.
    click.echo(f"serving metrics on http://{host}:{bound}/metrics", err=True)
    sys.stderr.flush()
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@metrics.command("show")
@json_option
def show(as_json: bool) -> None:
    """Print the metrics once (text exposition format, or JSON)."""
    from stellakeys.metrics import exposition, snapshot

    m = manager()
    if as_json:
        emit_json(snapshot(m).to_dict())
        return
    click.echo(exposition(m).decode("utf-8"), nl=False)

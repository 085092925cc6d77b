"""The ``stellaops`` process: the CLI with the cyclic collector tuned for a short-lived
command (:mod:`stellakeys_cli.collector`, decision 0033).

Kept apart from :mod:`stellakeys_cli.collector` so that the modules that call
:func:`~stellakeys_cli.collector.settled` (the CLI's context, ``--batch``, ``serve``) never
import the entry point, which imports them through :mod:`stellakeys_cli.main`.
"""

from __future__ import annotations

from stellakeys_cli import collector

__all__ = ["run"]


def run() -> None:
    """The ``stellaops`` and ``stella`` commands, and ``python -m stellakeys_cli``: the CLI
    with the collector tuned for a short-lived process. Tests and applications running the
    CLI in-process call :func:`stellakeys_cli.main.main`, which leaves the collector alone."""
    collector.starting()  # before click and the command's modules load
    from stellakeys_cli.main import main

    try:
        main()
    finally:
        collector.at_exit()

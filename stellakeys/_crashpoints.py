"""Deterministic crash points for crash-consistency tests. TEST-ONLY.

``STELLAKEYS_TEST_CRASH_AT=<name>`` makes the process SIGKILL itself when it reaches the point
``<name>`` (see docs/decisions/0016-key-identity-and-crash-consistency.md for the list). It
exists so the tests can kill ``key generate`` / ``rotate`` at *every* step, not at random
times; no production setting ever sets it. Reaching a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "STELLAKEYS_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if the test-only environment variable names ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

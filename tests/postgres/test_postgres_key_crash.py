"""Crash consistency of key generate / rotate on PostgreSQL: SIGKILL at every step, then
re-run (decision 0016; shared steps in tests/key_crash_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from key_crash_support import CRASH_POINTS, crash_then_rerun, make_home, setup_rotation


@pytest.mark.parametrize("op", ["generate", "rotate"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_key_operation_killed_at_every_step_can_be_rerun(
    tmp_path: Path, fresh_url: str, op: str, point: str
) -> None:
    from stellakeys.storage.postgres import PostgresStore

    PostgresStore.connect(fresh_url, migrate=True).close()
    home = make_home(tmp_path)
    if op == "rotate":
        setup_rotation(home, fresh_url)
    crash_then_rerun(home, fresh_url, op, point)

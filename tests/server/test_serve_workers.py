"""``stellaops serve --workers N``: N uvicorn worker processes, each with its own store, all
answering with the parent's configuration and clock; a bad configuration fails once, in the
parent, as one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.server_support import (
    PASSPHRASE,
    ROOT,
    Issuer,
    prepare_home,
    start_server,
    write_yaml,
)


def _python_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "python" in Path(f"/proc/{c}/cmdline").read_text()]


def test_two_workers_serve_the_same_home(
    tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> None:
    home, facts = prepare_home(tmp_path_factory.mktemp("workers"), issuer)
    server = start_server(home, workers=2)
    try:
        # uvicorn's supervisor and its two workers (plus, maybe, multiprocessing's helper).
        assert len(_python_children(server.proc.pid)) >= 2
        verify = {"Authorization": f"Bearer {issuer.token('ci@company.com', 'proofs:verify')}"}
        answers: list[Any] = []
        for _ in range(40):  # new connections: the kernel spreads them over the workers
            with httpx.Client(base_url=server.url, timeout=30) as c:
                answers.append(
                    c.post("/v1/verify", headers=verify, json={"proofBundle": facts["proof"]})
                )
        assert all(a.status_code == 200 and a.json()["ok"] is True for a in answers), [
            a.text for a in answers if a.status_code != 200 or not a.json()["ok"]
        ][:2]
        # The workers judge at the parent's clock (STELLAKEYS_TEST_NOW), so the answer is
        # the same as one process's; an unauthenticated request is refused by every worker.
        for _ in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                assert c.post("/v1/verify", json={"proofBundle": facts["proof"]}).status_code == 401
    finally:
        out = server.stop()
    assert "Traceback" not in out, out[-3000:]


def test_a_bad_configuration_fails_in_the_parent_as_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    # Valid for the schema, so only building the application finds what is missing (the
    # check the parent runs before any worker starts).
    write_yaml(home / "signer.yaml", {"signer": {"profiles": {}}})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STELLAKEYS_PASSPHRASE": PASSPHRASE}
    env.pop("STELLAKEYS_CONFIG", None)
    options = ("--workers", "2", "--port", "0")
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "--home", str(home), "serve", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "server" in errors[0], errors

"""Shared fixtures. Real peers only: a missing component fails the test with what to install."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest


class OpenSSL:
    """The ``openssl`` command line, run without a shell."""

    def __init__(self, executable: str) -> None:
        self.executable = executable

    def run(
        self, *args: str | Path, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``openssl args...`` and return the result, whatever its exit status."""
        return subprocess.run(
            [self.executable, *map(str, args)], input=input, capture_output=True, check=False
        )

    def __call__(self, *args: str | Path, input: bytes | None = None) -> bytes:
        """Run ``openssl args...``; fail the test with OpenSSL's stderr if it fails."""
        proc = self.run(*args, input=input)
        if proc.returncode != 0:
            cmd = " ".join(map(str, args))
            pytest.fail(
                f"openssl {cmd} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout


@pytest.fixture(scope="session")
def openssl() -> OpenSSL:
    executable = shutil.which("openssl")
    if executable is None:
        pytest.fail("the openssl command line is missing: install Debian package openssl")
    tool = OpenSSL(executable)
    version = tool("version").decode()
    match = re.match(r"OpenSSL (\d+)\.", version)
    if match is None or int(match.group(1)) < 3:
        pytest.fail(f"OpenSSL 3 is required, found {version.strip()!r}: install Debian openssl")
    return tool

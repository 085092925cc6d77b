"""Installing a JavaScript peer's pinned npm packages for a test (sigstore-js, oidc-provider).

The packages come from the registry by ``npm ci`` of the committed lock file into a scratch
directory; ``.ci/run`` installs them once and names the directory in an environment variable
instead. No node or npm, or a failed install, fails the test with what to do: it never skips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def npm_ci(package_dir: Path, scratch: Path) -> Path:
    """``npm ci`` of ``package_dir``'s package.json and package-lock.json into ``scratch``;
    returns the node_modules directory."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.fail("Node.js 20.17+ and npm are required (apt-get install nodejs npm)")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(package_dir / name, scratch / name)
    proc = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--omit=dev"],
        cwd=scratch, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"npm ci of {package_dir} failed: {proc.stderr[-2000:]}")
    return scratch / "node_modules"

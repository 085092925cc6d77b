"""AWS KMS for the tests: moto in server mode on a loopback port (no real AWS is reachable).

The KMS store talks HTTP to it through boto3 exactly as it would to AWS; only the endpoint
differs (``$STELLAKEYS_KMS_ENDPOINT``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[str]:
    """The endpoint URL of a moto server started for the test session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("moto is missing: pip install 'moto[server]' (in the stellakeys[test] extra)")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def kms_env(moto_kms: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Dummy credentials, a region and the moto endpoint; no user AWS config is read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STELLAKEYS_KMS_ENDPOINT", moto_kms)
    return moto_kms

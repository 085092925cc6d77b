from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.server_support import Issuer, Server, prepare_home, start_server


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("server")
    home, facts = prepare_home(tmp, issuer)
    server = start_server(home)
    try:
        yield {"server": server, **facts}
    finally:
        server.stop()


@pytest.fixture
def server(world: dict[str, Any]) -> Server:
    s = world["server"]
    assert isinstance(s, Server)
    return s

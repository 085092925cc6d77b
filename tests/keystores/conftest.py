"""Fixtures for the key store tests: a software store home, SoftHSM2 tokens, a moto KMS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from keystore_conformance import TEST_PASSPHRASE

from stellakeys.keystores import KeyStoreContext


@pytest.fixture(scope="module")
def software_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home per test module: creating a store costs one scrypt (0.4 s), so modules share."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def passphrase_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", TEST_PASSPHRASE)
    yield TEST_PASSPHRASE


@pytest.fixture
def software_context(software_home: Path) -> KeyStoreContext:
    return KeyStoreContext(home=software_home)


# SoftHSM2 and moto fixtures live in their own modules (usable from other test folders too).
from motokms import kms_env, moto_kms  # noqa: E402, F401
from softhsm import pkcs11_pin, softhsm  # noqa: E402, F401

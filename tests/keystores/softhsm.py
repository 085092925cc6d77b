"""A SoftHSM2 token directory for the tests: real SoftHSM2, no mock.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when the module is initialized (``C_Initialize``), and
python-pkcs11 keeps one initialized module per path per process. So the fixture is session
scoped: it writes a config pointing at a temp token directory, initializes every token the
tests need with ``softhsm2-util``, and only then lets anything load the module.

If SoftHSM2 is missing the tests fail (they do not skip) and say what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "so-pin-0000"

#: Tokens made for the test session, by label, with their user PINs. "T" is the main token;
#: "W" is never logged in by a right PIN, so wrong-PIN attempts reach C_Login; "S" is for
#: the benchmark-style login-per-signature tests that log out; "R" is re-initialised by the
#: planted-key attack tests (tests/keystores/test_key_identity.py).
TOKENS = {"T": "1234-user", "W": "5678-user", "S": "9999-user", "R": "4321-user"}


@dataclass(frozen=True)
class SoftHsmToken:
    label: str
    pin: str
    serial: str
    slot_id: int
    module: str


@dataclass(frozen=True)
class SoftHsm:
    conf: Path
    module: str
    tokens: dict[str, SoftHsmToken]

    def __getitem__(self, label: str) -> SoftHsmToken:
        return self.tokens[label]


def _require_softhsm() -> str:
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).exists():
        pytest.fail(
            f"SoftHSM2 is missing (softhsm2-util and {MODULE}): install Debian package softhsm2"
        )
    return util


def make_softhsm(directory: Path) -> SoftHsm:
    """Write a SoftHSM2 config under ``directory``, init the tokens, set SOFTHSM2_CONF."""
    util = _require_softhsm()
    tokendir = directory / "tokens"
    tokendir.mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label, pin in TOKENS.items():
        subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
            env=env,
            check=True,
            capture_output=True,
        )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    import pkcs11

    lib = pkcs11.lib(MODULE)
    tokens = {}
    for label, pin in TOKENS.items():
        token = lib.get_token(token_label=label)
        tokens[label] = SoftHsmToken(
            label=label,
            pin=pin,
            serial=bytes(token.serial).decode().strip(),
            slot_id=token.slot.slot_id,
            module=MODULE,
        )
    return SoftHsm(conf=conf, module=MODULE, tokens=tokens)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    previous = os.environ.get("SOFTHSM2_CONF")
    hsm = make_softhsm(tmp_path_factory.mktemp("softhsm"))
    yield hsm
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def pkcs11_pin(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> str:
    """The PIN of token T in $STELLAKEYS_PKCS11_PIN, and the module in its variable."""
    monkeypatch.delenv("STELLAKEYS_PKCS11_PIN_FILE", raising=False)
    monkeypatch.setenv("STELLAKEYS_PKCS11_PIN", softhsm["T"].pin)
    monkeypatch.setenv("STELLAKEYS_PKCS11_MODULE", softhsm.module)
    return softhsm["T"].pin

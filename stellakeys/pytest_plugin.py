"""pytest fixtures for projects that embed stellakeys (entry point group ``pytest11``).

Installed with stellakeys, so a downstream test suite gets these without any conftest:

* ``stellakeys_home``         a temporary home (mode 0700) with ``$STELLAKEYS_HOME`` and the
                              software store passphrase set, so the CLI uses it too;
* ``stellakeys_config``       the signer.yaml document written into the home (override it);
* ``stellakeys_clock``        a :class:`~stellakeys.clock.FrozenClock` (2025-01-01T00:00:00Z);
* ``stellakeys_manager``      a :class:`~stellakeys.manager.KeyManager` on that home and clock;
* ``stellakeys_signing_key``  factory: a generated key per profile (and algorithm);
* ``stellakeys_trust_anchor`` factory: a trust anchor (with a fresh key unless given some);
* ``stellakeys_softhsm_token`` a SoftHSM2 token in a temp dir, ``SOFTHSM2_CONF`` set.

This module is imported by every pytest run in an environment where stellakeys is installed,
including suites that never use it. So it imports nothing but pytest at module level (the
stellakeys package itself is lazy, see ``stellakeys/__init__.py``), defines only fixtures with
the ``stellakeys_`` prefix, and adds no hooks, options or markers that could change how
another suite runs. docs/pytest-plugin.md is the user guide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from stellakeys.anchors import TrustAnchor
    from stellakeys.clock import FrozenClock
    from stellakeys.keys import KeyRecord
    from stellakeys.manager import KeyManager

__all__ = [
    "CLOCK_START",
    "PASSPHRASE",
    "SOFTHSM2_MODULE",
    "SoftHsmToken",
]

#: The software key store passphrase of every test home. Test keys only.
PASSPHRASE = "stellakeys-pytest-passphrase"  # noqa: S105
#: Where ``stellakeys_clock`` starts.
CLOCK_START = datetime(2025, 1, 1, tzinfo=UTC)
#: Debian's SoftHSM2 module (package softhsm2).
SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_ACTOR = "pytest@stellakeys"
_EVIDENCE = "evidence.stella/v1"

# Variables that would make a test home read someone's real configuration or secrets.
_ISOLATE = (
    "STELLAKEYS_CONFIG",
    "STELLAKEYS_DATABASE_URL",
    "STELLAKEYS_PASSPHRASE_FILE",
)


@pytest.fixture(scope="session")
def _stellakeys_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A software key store's ``store.json`` made once per session (worker).

    A new store stretches its passphrase with scrypt (0.4 s, 128 MiB) under a fresh salt.
    Homes made from this template share the salt, so the process derives the key once and
    every later test hits the store's in-process cache: key generation in a test costs
    milliseconds. Sharing a salt between throwaway test homes costs nothing.
    """
    from stellakeys.crypto import get_algorithm
    from stellakeys.keystores._secrets import SecretSource
    from stellakeys.keystores.software import PASSPHRASE_ENV, SoftwareKeyStore

    directory = tmp_path_factory.mktemp("stellakeys-template", numbered=True) / "default"
    source = SecretSource("test passphrase", PASSPHRASE_ENV, environ={PASSPHRASE_ENV: PASSPHRASE})
    store = SoftwareKeyStore(directory, source, name="default")
    store.generate(get_algorithm("ed25519"), "template")  # writes store.json
    store.close()
    return directory / "store.json"


@pytest.fixture
def stellakeys_config() -> dict[str, Any] | None:
    """The signer.yaml document of the test home; ``None`` means the built-in five profiles
    on the software store. Override this fixture to test with your own profiles."""
    return None


@pytest.fixture
def stellakeys_home(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stellakeys_config: dict[str, Any] | None,
    _stellakeys_store_template: Path,
) -> Path:
    """A fresh stellakeys home (0700); ``$STELLAKEYS_HOME``, passphrase and actor are set for
    the test (restored afterwards), and configuration from the environment is cleared."""
    home = tmp_path / "stellakeys-home"
    home.mkdir(mode=0o700)
    os.chmod(home, 0o700)  # the umask may have removed bits from mkdir's mode
    store_dir = home / "keys" / "default"
    store_dir.mkdir(mode=0o700, parents=True)
    os.chmod(home / "keys", 0o700)
    os.chmod(store_dir, 0o700)
    target = store_dir / "store.json"
    shutil.copyfile(_stellakeys_store_template, target)
    os.chmod(target, 0o600)
    for name in _ISOLATE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STELLAKEYS_HOME", str(home))
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("STELLAKEYS_ACTOR", _ACTOR)
    if stellakeys_config is not None:
        import yaml

        config = home / "signer.yaml"
        config.write_text(yaml.safe_dump(stellakeys_config, sort_keys=False), encoding="utf-8")
        os.chmod(config, 0o600)
    return home


@pytest.fixture
def stellakeys_clock() -> FrozenClock:
    """A clock that moves only when the test says so (``set``, ``advance``)."""
    from stellakeys.clock import FrozenClock

    return FrozenClock(CLOCK_START)


@pytest.fixture
def stellakeys_manager(
    stellakeys_home: Path, stellakeys_clock: FrozenClock
) -> Iterator[KeyManager]:
    """A KeyManager on the test home (SQLite) and the frozen clock; closed after the test."""
    from stellakeys.manager import KeyManager

    manager = KeyManager.open(stellakeys_home, clock=stellakeys_clock, actor=_ACTOR)
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
def stellakeys_signing_key(
    stellakeys_manager: KeyManager,
) -> Callable[..., KeyRecord]:
    """Factory: ``stellakeys_signing_key(profile="default", key_id=None, algorithm=None)``.

    Generates a key in the profile's key store and returns its record. Key ids default to
    ``test-<profile>-<n>``.
    """
    counter = iter(range(1, 1_000_000))

    def make(
        profile: str = "default", key_id: str | None = None, algorithm: str | None = None
    ) -> KeyRecord:
        kid = key_id or f"test-{profile}-{next(counter)}"
        return stellakeys_manager.generate_key(kid, profile, algorithm)

    return make


@pytest.fixture
def stellakeys_trust_anchor(
    stellakeys_manager: KeyManager,
    stellakeys_signing_key: Callable[..., KeyRecord],
) -> Callable[..., TrustAnchor]:
    """Factory: ``stellakeys_trust_anchor(purl_pattern="pkg:npm/*", key_ids=None,
    predicate_types=("evidence.stella/v1",), policy_version="v1")``.

    Without ``key_ids`` a fresh key of the ``default`` profile is generated for the anchor.
    """

    def make(
        purl_pattern: str = "pkg:npm/*",
        key_ids: Sequence[str] | None = None,
        predicate_types: Sequence[str] = (_EVIDENCE,),
        policy_version: str = "v1",
    ) -> TrustAnchor:
        ids = list(key_ids) if key_ids is not None else [stellakeys_signing_key().key_id]
        return stellakeys_manager.create_anchor(
            purl_pattern, ids, list(predicate_types), policy_version
        )

    return make


# --- SoftHSM2 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftHsmToken:
    """An initialized SoftHSM2 token. ``key_store_uri`` is a profile ``keyStore`` value that
    reaches it with the PIN read from a 0600 file (no PIN in the environment)."""

    conf: Path
    module: str
    label: str
    pin: str
    so_pin: str
    serial: str
    slot_id: int
    pin_file: Path

    @property
    def key_store_uri(self) -> str:
        from urllib.parse import quote

        # The runbook's hsm:// form: profile keyStore values must look like scheme://...
        return (
            f"hsm://pkcs11/token/{quote(self.label, safe='')}"
            f"?module-path={quote(self.module, safe='/')}"
            f"&pin-source={quote(str(self.pin_file), safe='/')}"
        )


_TOKEN_LABEL = "stellakeys-pytest"  # noqa: S105 - a label, not a secret
_TOKEN_PIN = "1234-user"  # noqa: S105 - a throwaway test token's PIN
_TOKEN_SO_PIN = "so-pin-0000"  # noqa: S105 - a throwaway test token's SO PIN


@pytest.fixture(scope="session")
def stellakeys_softhsm_token(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SoftHsmToken]:
    """A SoftHSM2 token in a temp dir, with ``SOFTHSM2_CONF`` pointing at it.

    Session scoped because SoftHSM2 reads ``SOFTHSM2_CONF`` once per process, when the module
    is first initialized: a token made later in the same process would be invisible. Fails,
    rather than skips, when SoftHSM2 is missing.
    """
    util = shutil.which("softhsm2-util")
    if util is None or not Path(SOFTHSM2_MODULE).exists():
        pytest.fail(
            f"SoftHSM2 is missing (softhsm2-util and {SOFTHSM2_MODULE}): "
            "install Debian package softhsm2"
        )
    directory = tmp_path_factory.mktemp("stellakeys-softhsm", numbered=True)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    subprocess.run(
        [
            *(util, "--init-token", "--free", "--label", _TOKEN_LABEL),
            *("--so-pin", _TOKEN_SO_PIN, "--pin", _TOKEN_PIN),
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        check=True,
        capture_output=True,
    )
    pin_file = directory / "pin"
    pin_file.write_text(_TOKEN_PIN, encoding="utf-8")
    os.chmod(pin_file, 0o600)

    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        import pkcs11
    except ImportError:
        pytest.fail("python-pkcs11 is missing: pip install 'stellakeys[pkcs11]'")
    try:
        token = pkcs11.lib(SOFTHSM2_MODULE).get_token(token_label=_TOKEN_LABEL)
    except pkcs11.exceptions.NoSuchToken:
        pytest.fail(
            "SoftHSM2 was already initialized in this process with another SOFTHSM2_CONF, "
            "so the new token is invisible: request stellakeys_softhsm_token before anything "
            "else loads the module"
        )
    yield SoftHsmToken(
        conf=conf,
        module=SOFTHSM2_MODULE,
        label=_TOKEN_LABEL,
        pin=_TOKEN_PIN,
        so_pin=_TOKEN_SO_PIN,
        serial=bytes(token.serial).decode().strip(),
        slot_id=token.slot.slot_id,
        pin_file=pin_file,
    )
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous

"""open_key_store: built-in schemes, third-party entry points, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from stellakeys.errors import KeyStoreError
from stellakeys.keystores import KeyStoreContext, known_schemes, open_key_store, scheme_of


def test_built_ins_are_registered_entry_points() -> None:
    names = {ep.name for ep in entry_points(group="stellakeys.keystores")}
    assert {"software", "hsm", "pkcs11", "kms"} <= names


def test_schemes() -> None:
    assert scheme_of("pkcs11:token=T;id=%01") == "pkcs11"
    assert scheme_of("HSM://pkcs11/slot/0") == "hsm"
    assert scheme_of("software://default") == "software"
    with pytest.raises(KeyStoreError, match="not a key store URI"):
        scheme_of("/etc/keys")


def test_unknown_scheme_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError) as info:
        open_key_store("vault://transit/k", KeyStoreContext(home=tmp_path))
    message = str(info.value)
    assert "'vault'" in message
    for scheme in ("hsm", "kms", "pkcs11", "software"):
        assert scheme in message
    assert "stellakeys.keystores" in message


def _install_plugin(site: Path, monkeypatch: pytest.MonkeyPatch, entries: str) -> None:
    """A real (if minimal) installed distribution: dist-info with entry_points.txt."""
    dist = site / "thirdparty_store-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[stellakeys.keystores]\n" + entries)
    (site / "thirdparty_store.py").write_text(
        textwrap.dedent(
            """
            from stellakeys.crypto import get_algorithm

            class MemoryStore:
                def __init__(self, uri, context):
                    self.uri, self.keys = uri, {}

                def generate(self, algorithm, key_id):
                    key = algorithm.generate()
                    self.keys[key_id] = key
                    return key

                def open(self, uri):
                    return self.keys[uri]

                def close(self):
                    pass

            def hijack(uri, context):
                raise AssertionError("a plugin must not replace a built-in scheme")
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))


def test_third_party_store_via_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(
        tmp_path / "site",
        monkeypatch,
        "memory = thirdparty_store:MemoryStore\nsoftware = thirdparty_store:hijack\n",
    )
    assert "memory" in known_schemes()
    store = open_key_store("memory://x", KeyStoreContext(home=tmp_path))
    assert type(store).__name__ == "MemoryStore"
    # The plugin's attempt to take over "software" is ignored: the built-in answers.
    software = open_key_store("software://default", KeyStoreContext(home=tmp_path))
    assert type(software).__name__ == "SoftwareKeyStore"


def test_broken_plugin_is_a_key_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path / "site", monkeypatch, "broken = thirdparty_store:missing\n")
    with pytest.raises(KeyStoreError, match="failed to load"):
        open_key_store("broken://x", KeyStoreContext(home=tmp_path))


def test_heavy_dependencies_are_imported_only_when_used() -> None:
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from stellakeys.keystores import KeyStoreContext, open_key_store
        open_key_store("software://default", KeyStoreContext(home=Path("/nonexistent")))
        heavy = sorted(m for m in ("pkcs11", "boto3", "botocore") if m in sys.modules)
        assert not heavy, heavy
        open_key_store("pkcs11:token=T", KeyStoreContext(home=Path("/nonexistent")))
        assert "pkcs11" in sys.modules and "boto3" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)

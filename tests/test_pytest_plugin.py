"""The pytest plugin, as a downstream project meets it: through the pytest11 entry point, in
test suites run by ``pytester``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]


def test_registered_under_pytest11() -> None:
    entry = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "stellakeys"]
    assert [e.value for e in entry] == ["stellakeys.pytest_plugin"]


def test_importing_the_plugin_is_cheap() -> None:
    # Every pytest run in an environment with stellakeys imports the plugin: it must not pull
    # in the crypto stack, the storage adapters or the facade.
    code = (
        "import sys, pytest\n"
        "import stellakeys.pytest_plugin\n"
        "heavy = [m for m in sys.modules if m.startswith(('cryptography', 'stellakeys.'))\n"
        "         and m != 'stellakeys.pytest_plugin']\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_fixtures_in_a_downstream_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_downstream="""
        import os, stat
        from datetime import timedelta
        from stellakeys import Statement, Subject, TimeSource
        from stellakeys.pytest_plugin import CLOCK_START

        def statement(purl):
            return Statement((Subject(purl, {"sha256": "ab" * 32}),),
                             "evidence.stella/v1", {}).to_json()

        def test_home(stellakeys_home):
            assert stat.S_IMODE(stellakeys_home.stat().st_mode) == 0o700
            assert os.environ["STELLAKEYS_HOME"] == str(stellakeys_home)
            assert os.environ["STELLAKEYS_PASSPHRASE"]

        def test_clock_and_manager(stellakeys_manager, stellakeys_clock):
            assert stellakeys_manager.clock is stellakeys_clock
            assert stellakeys_clock.now() == CLOCK_START

        def test_signing_keys_per_profile(stellakeys_signing_key):
            assert stellakeys_signing_key().algorithm == "ed25519"
            assert stellakeys_signing_key("fips").algorithm == "ecdsa-p256-sha256"
            assert stellakeys_signing_key("pqc", key_id="mine").key_id == "mine"
            assert stellakeys_signing_key("sm2").algorithm == "sm2-sm3"

        def test_anchor_sign_verify(stellakeys_manager, stellakeys_trust_anchor,
                                    stellakeys_clock):
            anchor = stellakeys_trust_anchor("pkg:npm/*")
            (key,) = anchor.allowed_keyids(stellakeys_clock.now())
            stellakeys_clock.advance(timedelta(days=1))
            proof = stellakeys_manager.sign(statement("pkg:npm/x@1"), key)
            result = stellakeys_manager.verify(proof)
            assert result.ok and result.anchor_id == anchor.anchor_id
            assert result.time_source is TimeSource.NOW
            assert not stellakeys_manager.verify(proof, at=CLOCK_START - timedelta(1)).ok

        def test_anchor_with_given_keys(stellakeys_trust_anchor, stellakeys_signing_key):
            k = stellakeys_signing_key("pqc")
            anchor = stellakeys_trust_anchor("pkg:maven/*", [k.key_id], ["a/v1", "b/v1"])
            assert [e.key_id for e in anchor.key_history] == [k.key_id]
            assert anchor.allowed_predicate_types == ("a/v1", "b/v1")

        def test_homes_are_isolated(stellakeys_manager):
            assert stellakeys_manager.list_keys() == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=6)


def test_the_cli_uses_the_test_home(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_cli="""
        import json
        from click.testing import CliRunner
        from stellakeys_cli.main import cli

        def test_cli(stellakeys_home):
            runner = CliRunner()
            out = runner.invoke(cli, ["key", "generate", "--key-id", "k1"])
            assert out.exit_code == 0, out.output
            listed = runner.invoke(cli, ["key", "list", "--json"])
            assert [k["keyId"] for k in json.loads(listed.output)] == ["k1"]
            assert (stellakeys_home / "stellakeys.db").exists()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_overriding_the_config(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def stellakeys_config():
            return {"signer": {"profiles": {"only": {"algorithm": "ES384"}}}}
        """
    )
    pytester.makepyfile(
        test_config="""
        import pytest
        from stellakeys import ConfigError

        def test_profiles(stellakeys_manager, stellakeys_signing_key):
            assert list(stellakeys_manager.config.profiles) == ["only"]
            assert stellakeys_signing_key("only").algorithm == "ecdsa-p384-sha384"
            with pytest.raises(ConfigError, match="unknown profile"):
                stellakeys_signing_key("default")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_softhsm_token(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def stellakeys_config(stellakeys_softhsm_token):
            return {"signer": {"profiles": {"fips": {
                "algorithm": "SHA256-ECDSA-P256",
                "keyStore": stellakeys_softhsm_token.key_store_uri,
            }}}}
        """
    )
    pytester.makepyfile(
        test_hsm="""
        import os
        from stellakeys import Statement, Subject

        def test_token(stellakeys_softhsm_token):
            token = stellakeys_softhsm_token
            assert os.environ["SOFTHSM2_CONF"] == str(token.conf)
            assert token.label == "stellakeys-pytest" and token.serial

        def test_hsm_profile(stellakeys_manager, stellakeys_trust_anchor,
                             stellakeys_signing_key):
            key = stellakeys_signing_key("fips")
            assert "token=stellakeys-pytest" in key.key_store_uri
            stellakeys_trust_anchor("pkg:npm/*", [key.key_id])
            body = Statement((Subject("pkg:npm/x@1", {"sha256": "ab" * 32}),),
                             "evidence.stella/v1", {}).to_json()
            assert stellakeys_manager.verify(stellakeys_manager.sign(body, key.key_id)).ok
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_a_suite_that_does_not_use_it_is_untouched(pytester: pytest.Pytester) -> None:
    # Same outcome with and without the plugin; it adds no fixture without our prefix.
    pytester.makepyfile(
        test_plain="""
        def test_one(tmp_path):
            assert tmp_path.exists()

        def test_two():
            assert 1 + 1 == 2
        """
    )
    with_plugin = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    with_plugin.assert_outcomes(passed=2)
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:stellakeys", "-q")
    without.assert_outcomes(passed=2)
    listing = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures", "-v")
    ours = {
        line.split()[0]
        for line in listing.outlines
        if "stellakeys/pytest_plugin.py" in line or "stellakeys_" in line.split(" ")[0]
    }
    assert {
        "stellakeys_home",
        "stellakeys_clock",
        "stellakeys_manager",
        "stellakeys_signing_key",
        "stellakeys_trust_anchor",
        "stellakeys_softhsm_token",
        "stellakeys_config",
    } <= {name.split(" ")[0] for name in ours}
    assert all(name.lstrip("_").startswith("stellakeys_") for name in ours), ours

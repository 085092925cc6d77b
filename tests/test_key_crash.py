"""Crash consistency of key generate / rotate on SQLite: SIGKILL at every step, then re-run
(decision 0016; the PostgreSQL twin is tests/postgres/test_postgres_key_crash.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from key_crash_support import (
    CRASH_POINTS,
    PASSPHRASE,
    crash_then_rerun,
    make_home,
    open_manager,
    run_op,
    setup_rotation,
)

from stellakeys.errors import ConflictError, KeyStoreError
from stellakeys.keystores.software import SoftwareKeyStore
from stellakeys.manager import KeyManager
from stellakeys_cli.main import cli


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_generate_killed_at_every_step_can_be_rerun(tmp_path: Path, point: str) -> None:
    home = make_home(tmp_path)
    crash_then_rerun(home, "", "generate", point)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_rotate_killed_at_every_step_can_be_rerun(tmp_path: Path, point: str) -> None:
    home = make_home(tmp_path)
    setup_rotation(home, "")
    crash_then_rerun(home, "", "rotate", point)


def _doctor(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        ["--home", str(home), "doctor", *args],
        env={"STELLAKEYS_PASSPHRASE": PASSPHRASE},
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def test_doctor_lists_and_repairs_what_crashes_leave(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    assert run_op(home, "", "generate", "k-tmp", crash_at="software-tmp-written").returncode < 0
    assert run_op(home, "", "generate", "k-orphan", crash_at="key-created").returncode < 0

    code, out = _doctor(home, "--tmp-min-age", "0")
    assert code == 1
    assert "stale-tmp" in out and "intent" in out and "orphan-key" in out
    assert "k-tmp" in out and "k-orphan" in out

    code, out = _doctor(home, "--repair", "--tmp-min-age", "0")
    assert code == 0, out
    assert "removed" in out and "finished" in out

    code, out = _doctor(home, "--tmp-min-age", "0")
    assert (code, out.strip()) == (0, "doctor: nothing to repair")
    with open_manager(home, "") as m:
        assert {r.key_id for r in m.list_keys()} == {"k-tmp", "k-orphan"}


def test_doctor_sets_aside_an_orphan_without_intent_and_frees_its_key_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file nobody recorded (an older version's crash, a copy from elsewhere) blocked
    its key id for good ("key exists"); doctor --repair sets it aside, never deletes it."""
    home = make_home(tmp_path)
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", PASSPHRASE)
    from stellakeys.crypto import get_algorithm
    from stellakeys.keystores import KeyStoreContext

    ks = SoftwareKeyStore.from_uri("software://crash", KeyStoreContext(home=home))
    stray = ks.generate(get_algorithm("ed25519"), "k1").public_key().fingerprint

    with open_manager(home, "") as m, pytest.raises(ConflictError) as refused:
        m.generate_key("k1")
    assert stray in str(refused.value)  # fails clearly, naming the key in the way

    code, out = _doctor(home, "--tmp-min-age", "0")
    assert code == 1 and "orphan-key" in out and "no intent made it" in out
    code, out = _doctor(home, "--repair", "--tmp-min-age", "0")
    assert code == 0 and "set aside" in out, out
    kept = [p for p in (home / "keys" / "crash").iterdir() if p.name.startswith(".orphan-k1-")]
    assert len(kept) == 1  # kept, not deleted

    # The refused run's intent was finished by the repair, with a new key.
    with open_manager(home, "") as m:
        assert m.get_key("k1").fingerprint != stray


def test_rerun_refuses_a_key_the_intent_did_not_make(tmp_path: Path) -> None:
    """Crash after the intent recorded its key's public key but before the key file was
    written; someone then puts another key under the key id: the re-run does not adopt it."""
    home = make_home(tmp_path)
    assert run_op(home, "", "generate", "k1", crash_at="key-prepared").returncode < 0
    os.environ["STELLAKEYS_PASSPHRASE"] = PASSPHRASE
    from stellakeys.crypto import get_algorithm
    from stellakeys.keystores import KeyStoreContext

    ks = SoftwareKeyStore.from_uri("software://crash", KeyStoreContext(home=home))
    planted = ks.generate(get_algorithm("ed25519"), "k1").public_key().fingerprint
    with open_manager(home, "") as m:
        with m.store.read() as tx:
            intent = tx.get_intent("k1")
        assert intent is not None and intent.fingerprint is not None
        with pytest.raises(ConflictError) as refused:
            m.generate_key("k1")
        assert planted in str(refused.value) and intent.fingerprint in str(refused.value)
        with m.store.read() as tx:
            assert tx.get_key("k1") is None


def test_rerun_with_other_arguments_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    setup_rotation(home, "")
    assert run_op(home, "", "generate", "new", crash_at="key-created").returncode < 0
    rerun = run_op(home, "", "rotate", "new", "old")
    assert rerun.returncode == 1
    assert "unfinished generate" in rerun.stderr


def test_a_generate_refused_by_the_key_store_leaves_no_intent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing half-done (the store made no key): the key id stays free for another request."""
    home = make_home(tmp_path)
    with open_manager(home, "") as m:
        m.generate_key("k0")
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "not-the-passphrase")
    with KeyManager.open(home) as m:
        with pytest.raises(KeyStoreError, match="wrong passphrase"):
            m.generate_key("k1")
        with m.store.read() as tx:
            assert tx.list_intents() == []

"""Crash safety of the software store: writers killed with SIGKILL at random points.

Each writer is a separate process that generates Ed25519 keys in a loop and prints each key's
pinned URI after ``generate()`` returns. It is killed with SIGKILL after a random delay, often
mid-write. Afterwards the store must open (permission checks included), every key whose
generation was reported must load and sign, and every file that looks like a key must be a
complete one (temp files of interrupted writes are never taken for keys).

Writers are forked from a "zygote" process that has already opened the store and derived the
passphrase. That keeps scrypt at its production cost (0.4 s) without paying it per trial; a
few extra trials start from scratch with a fresh store, to kill writers while the store itself
is being created. Trials run in pairs so that two writers also race on the same directory.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from keystore_conformance import TEST_PASSPHRASE

from stellakeys.keystores import KeyStoreContext
from stellakeys.keystores.software import SoftwareKeyStore

ZYGOTE = r"""
import os, sys
from pathlib import Path
from stellakeys.crypto import get_algorithm
from stellakeys.keystores import KeyStoreContext
from stellakeys.keystores.software import SoftwareKeyStore

home, store_name = Path(sys.argv[1]), sys.argv[2]
store = SoftwareKeyStore.from_uri("software://" + store_name, KeyStoreContext(home=home))
alg = get_algorithm("ed25519")
if sys.argv[3] == "zygote":
    print(store.generate(alg, "warm-up").uri, flush=True)  # creates the store, derives once
    for line in sys.stdin:
        cmd, arg = line.split()
        if cmd == "spawn":
            report = Path(arg)
            pid = os.fork()
            if pid == 0:
                fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, 1)
                n = 0
                while True:
                    handle = store.generate(alg, f"{report.stem}-{n}")
                    print(handle.uri, flush=True)
                    n += 1
            print(pid, flush=True)
        elif cmd == "reap":
            print(os.waitpid(int(arg), 0)[1], flush=True)
else:  # a writer started from scratch
    n = 0
    while True:
        print(store.generate(alg, f"{sys.argv[3]}-{n}").uri, flush=True)
        n += 1
"""

TRIALS = 50  # killed writers forked from the zygote
FRESH_TRIALS = 6  # killed writers that also create their store


def _ask(zygote: subprocess.Popen[str], command: str) -> str:
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.write(command + "\n")
    zygote.stdin.flush()
    return zygote.stdout.readline().strip()


def _reported(report: Path) -> list[str]:
    # A line is complete only with its newline: a kill between print's write calls cannot
    # happen (one write per flush), but be strict anyway.
    text = report.read_text() if report.exists() else ""
    return [line for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _check_store(home: Path, name: str, reported: list[str]) -> tuple[int, int]:
    store = SoftwareKeyStore.from_uri(f"software://{name}", KeyStoreContext(home=home))
    inventory = store.inventory()
    for uri in (line.strip() for line in reported):
        key_id = uri.split("/")[-1].split("#")[0]
        assert inventory.get(key_id) == uri, f"reported key {uri} lost"
    for uri in inventory.values():
        handle = store.open(uri)
        handle.public_key().verify(handle.sign(b"after the crash"), b"after the crash")
    names = os.listdir(store.directory)
    junk = [n for n in names if n.startswith(".tmp-")]
    assert set(names) == {"store.json", *(f"{k}.pem" for k in inventory), *junk}
    return len(inventory), len(junk)


@pytest.mark.slow
def test_sigkilled_writers_lose_no_reported_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", TEST_PASSPHRASE)
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE_FILE", raising=False)
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    started = time.monotonic()
    home = tmp_path / "home"
    reports = tmp_path / "reports"
    reports.mkdir()
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(home), "crash", "zygote"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    killed_mid_run = 0
    try:
        assert zygote.stdout is not None
        warm_up = zygote.stdout.readline()
        assert warm_up.startswith("software://crash/warm-up#"), warm_up
        for pair in range(TRIALS // 2):
            pids = []
            for side in "ab":
                pids.append(int(_ask(zygote, f"spawn {reports / f't{pair}{side}.txt'}")))
            for pid in pids:
                time.sleep(rng.uniform(0.0, 0.06))
                os.kill(pid, signal.SIGKILL)
            for pid in pids:
                status = int(_ask(zygote, f"reap {pid}"))
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                killed_mid_run += 1
    finally:
        zygote.kill()
        zygote.wait()

    reported = [warm_up]
    for report in sorted(reports.iterdir()):
        reported += _reported(report)
    keys, junk = _check_store(home, "crash", reported)
    assert killed_mid_run == TRIALS
    assert len(reported) > TRIALS, "writers were killed before they wrote anything"

    # Writers that start from nothing: killed while importing, deriving, creating the store
    # directory and store.json, or generating.
    for trial in range(FRESH_TRIALS):
        name = f"fresh{trial}"
        report = reports / f"{name}.txt"
        with report.open("w") as out:
            writer = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE, str(home), name, name], stdout=out
            )
            time.sleep(rng.uniform(0.1, 0.9))
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        if (home / "keys" / name / "store.json").exists():
            _check_store(home, name, _reported(report))
        else:
            assert not _reported(report)
    elapsed = time.monotonic() - started
    print(
        f"crash test: seed {seed}, {keys} keys survived {TRIALS} kills "
        f"({junk} interrupted writes left temp files), {elapsed:.1f} s"
    )

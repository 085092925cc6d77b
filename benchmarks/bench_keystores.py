"""Key store signing throughput: software store vs SoftHSM2, session reuse vs login per signature.

Rows (256-byte message, hashing included, signature returned in our wire format):

* software store, Ed25519 and ECDSA P-256: the decrypted key is cached in the handle, so this
  is the ``cryptography`` signing rate plus our wrapper;
* SoftHSM2 through the PKCS#11 store, Ed25519 (CKM_EDDSA) and P-256 (SHA-256 on the host +
  CKM_ECDSA, r||s -> DER), on the one shared logged-in session;
* SoftHSM2 with a login per signature: open session + C_Login + find key + sign + C_Logout +
  close, which is what securesystemslib's HSM signer does for every signature.

Each rate is the best of five timed batches (a busy 2-core machine understates less). SoftHSM2
is software too: a network HSM adds a round trip per call, which makes the per-signature
login (four or more round trips) look worse still. Needs Debian ``softhsm2``.
Run: ``python benchmarks/bench_keystores.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MESSAGE = bytes(range(256))
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin-1234"


def rate(operation: Callable[[], object], batch: int, batches: int = 5) -> float:
    best = 0.0
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        best = max(best, batch / (time.perf_counter() - start))
    return best


def _softhsm(directory: Path) -> None:
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).exists():
        raise SystemExit("SoftHSM2 is missing: install Debian package softhsm2")
    tokens = directory / "tokens"
    tokens.mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before python-pkcs11 loads the module
    subprocess.run(
        [util, "--init-token", "--free", "--label", "bench", "--so-pin", "so-1234", "--pin", PIN],
        check=True,
        capture_output=True,
    )


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches (smoke run)")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    fast, slow = (50, 10) if args.quick else (2000, 150)

    with tempfile.TemporaryDirectory() as tmp:
        _softhsm(Path(tmp))
        os.environ["STELLAKEYS_PASSPHRASE"] = "benchmark passphrase"
        os.environ["STELLAKEYS_PKCS11_PIN"] = PIN
        os.environ.pop("STELLAKEYS_PASSPHRASE_FILE", None)
        os.environ.pop("STELLAKEYS_PKCS11_PIN_FILE", None)

        import pkcs11
        from pkcs11 import Mechanism, ObjectClass

        from stellakeys.crypto import get_algorithm
        from stellakeys.keystores import KeyStoreContext, open_key_store
        from stellakeys.keystores.pkcs11 import Pkcs11KeyHandle

        context = KeyStoreContext(home=Path(tmp) / "home")
        software = open_key_store("software://bench", context)
        hsm = open_key_store(f"pkcs11:token=bench?module-path={MODULE}", context)
        rows: list[tuple[str, float]] = []
        for alg in ("ed25519", "ecdsa-p256-sha256"):
            handle = software.generate(get_algorithm(alg), f"sw-{alg}")
            rows.append((f"software store, {alg}", rate(lambda h=handle: h.sign(MESSAGE), fast)))
        token = pkcs11.lib(MODULE).get_token(token_label="bench")
        handles: dict[str, Pkcs11KeyHandle] = {}
        for alg in ("ed25519", "ecdsa-p256-sha256"):
            hsm_handle = hsm.generate(get_algorithm(alg), f"hsm-{alg}")
            assert isinstance(hsm_handle, Pkcs11KeyHandle)
            handles[alg] = hsm_handle
            rows.append(
                (
                    f"SoftHSM2, {alg}, one shared session",
                    rate(lambda h=hsm_handle: h.sign(MESSAGE), fast // 4),
                )
            )

        # Login per signature needs the token logged out between operations, so the store's
        # shared session is closed first (PKCS#11 login state is per process and token).
        hsm.close()
        for alg, hsm_handle in handles.items():
            cka_id = hsm_handle.cka_id
            mechanism = Mechanism.EDDSA if alg == "ed25519" else Mechanism.ECDSA

            def login_and_sign(cka_id: bytes = cka_id, mechanism: Mechanism = mechanism) -> bytes:
                data = MESSAGE if mechanism == Mechanism.EDDSA else hashlib.sha256(MESSAGE).digest()
                with token.open(user_pin=PIN) as session:  # C_OpenSession + C_Login
                    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=cka_id)
                    signature: bytes = key.sign(data, mechanism=mechanism)
                return signature  # leaving the block: C_Logout + C_CloseSession

            rows.append((f"SoftHSM2, {alg}, login per signature", rate(login_and_sign, slow)))
        software.close()

    width = max(len(name) for name, _ in rows)
    print(f"{'key store, algorithm, mode':<{width}}  {'sign ops/s':>11}")
    for name, ops in rows:
        print(f"{name:<{width}}  {ops:>11,.0f}")
    shared = dict(rows)
    for alg in ("ed25519", "ecdsa-p256-sha256"):
        reuse = shared[f"SoftHSM2, {alg}, one shared session"]
        login = shared[f"SoftHSM2, {alg}, login per signature"]
        print(f"session reuse / login per signature, {alg}: {reuse / login:.1f}x")
    return rows


if __name__ == "__main__":
    main()

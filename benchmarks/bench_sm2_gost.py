"""SM2 and GOST R 34.10-2012 sign/verify throughput: stellakeys (system libcrypto + gost engine)
beside the pure-Python libraries it was chosen over, measured in the same run.

Every row signs or verifies a 256-byte message end to end, hashing included (SM3 with Z_A for
SM2, Streebog for GOST), because that is what a caller pays. Rates are the best of five timed
batches, twice: per elapsed second, and per CPU second of this process. On a shared machine
(the load average is printed) the wall-clock rate also counts time spent waiting for a core;
the CPU rate is what one free core does, and it is the one the target is judged on.
The "2 threads" column runs two verifying threads at once: ctypes releases the GIL around
OpenSSL, so on a 2-core machine it should approach twice the single-thread rate.

Comparisons (optional, never project dependencies; ``pip install gmssl gostcrypto``):

* gmssl ``CryptSM2.sign_with_sm3`` / ``verify_with_sm3`` on the GB/T 32918 example key;
* gostcrypto ``gostsignature`` on the same curves (TC26-256-B is CryptoPro-A renamed), with its
  own Streebog. pygost is not on PyPI in an installable form, so it is not measured.

Target (reported, not enforced): >= 2,000 verify/s for each stellakeys algorithm.
Run: ``python benchmarks/bench_sm2_gost.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from stellakeys.crypto import PrivateKey, PublicKey, get_algorithm
from stellakeys.crypto import _libcrypto as native
from stellakeys.crypto._gost import Gost

MESSAGE = bytes(range(256))
TARGET_VERIFY = 2000.0
GB_T_32918_D = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"
GB_T_32918_Q = (
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)


class Rate(NamedTuple):
    wall: float  # operations per elapsed second
    cpu: float  # operations per CPU second of this process: what contention cannot steal


def ops_per_second(fn: Callable[[], object], budget: float) -> Rate:
    """Best of five timed batches; the batch size is calibrated to ``budget / 5`` seconds."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget / 20 or n >= 1 << 20:
            break
        n *= 2
    n = max(1, int(n * (budget / 5) / max(elapsed, 1e-9)))
    wall = cpu = 0.0
    for _ in range(5):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        wall = max(wall, n / (time.perf_counter() - start))
        cpu = max(cpu, n / max(time.process_time() - start_cpu, 1e-9))
    return Rate(wall, cpu)


def threaded_ops_per_second(fn: Callable[[], object], threads: int, budget: float) -> float:
    """Total rate of ``threads`` threads running ``fn`` for ``budget`` seconds together."""
    counts = [0] * threads
    stop = threading.Event()
    start = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        start.wait()
        while not stop.is_set():
            fn()
            counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(budget)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


#: library, algorithm, sign, verify, verify with two threads (wall clock), note
Row = tuple[str, str, Rate | None, Rate | None, float | None, str]


#: (algorithm, paramset or None for the default). The non-default GOST sets are the two the
#: engine has dedicated (ECCKiila-generated) arithmetic for; they show what a paramset choice buys.
STELLAKEYS_CASES: tuple[tuple[str, str | None], ...] = (
    ("sm2-sm3", None),
    ("gost-r-34.10-2012-256", None),
    ("gost-r-34.10-2012-512", None),
    ("gost-r-34.10-2012-256", "TCA"),
    ("gost-r-34.10-2012-512", "C"),
)


def stellakeys_rows(budget: float) -> list[Row]:
    rows: list[Row] = []
    for name, paramset in STELLAKEYS_CASES:
        alg = get_algorithm(name)
        if paramset is None:
            key = alg.generate()
            label = name + (" (CryptoPro-A)" if name.endswith("256") else "")
            label += " (TC26-A)" if name.endswith("512") else ""
        else:
            assert isinstance(alg, Gost)
            key = alg.generate(paramset=paramset)
            label = f"{name} (paramset {paramset})"
        public = key.public_key()
        signature = key.sign(MESSAGE)

        def sign(key: PrivateKey = key) -> bytes:
            return key.sign(MESSAGE)

        def verify(public: PublicKey = public, signature: bytes = signature) -> None:
            public.verify(signature, MESSAGE)

        sign_rate = ops_per_second(sign, budget)
        verify_rate = ops_per_second(verify, budget)
        two = threaded_ops_per_second(verify, 2, budget)
        note = "meets target" if verify_rate.cpu >= TARGET_VERIFY else "below target"
        rows.append(("stellakeys", label, sign_rate, verify_rate, two, note))
    return rows


def gmssl_rows(budget: float) -> list[Row]:
    try:
        from gmssl import sm2  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return [("gmssl", "sm2-sm3", None, None, None, "not installed (pip install gmssl)")]
    crypt = sm2.CryptSM2(private_key=GB_T_32918_D, public_key=GB_T_32918_Q)
    signature = crypt.sign_with_sm3(MESSAGE)
    assert crypt.verify_with_sm3(signature, MESSAGE)
    sign_rate = ops_per_second(lambda: crypt.sign_with_sm3(MESSAGE), budget)
    verify_rate = ops_per_second(lambda: crypt.verify_with_sm3(signature, MESSAGE), budget)
    return [("gmssl", "sm2-sm3", sign_rate, verify_rate, None, "nonce from `random`")]


def gostcrypto_rows(budget: float) -> list[Row]:
    try:
        import gostcrypto  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return [
            ("gostcrypto", "gost-*", None, None, None, "not installed (pip install gostcrypto)")
        ]
    gs = gostcrypto.gostsignature
    rows: list[Row] = []
    cases = [
        ("gost-r-34.10-2012-256", gs.MODE_256, "id-tc26-gost-3410-2012-256-paramSetB", 32),
        ("gost-r-34.10-2012-512", gs.MODE_512, "id-tc26-gost-3410-12-512-paramSetA", 64),
    ]
    for name, mode, curve, size in cases:
        signer = gs.new(mode, gs.CURVES_R_1323565_1_024_2019[curve])
        private = bytearray(os.urandom(size - 1).rjust(size, b"\x00"))  # < q for both curves
        public = signer.public_key_generate(private)
        hash_name = f"streebog{size * 8}"

        def digest(hash_name: str = hash_name) -> bytearray:
            return bytearray(gostcrypto.gosthash.new(hash_name, data=MESSAGE).digest())

        def sign(signer: Any = signer, private: bytearray = private) -> Any:
            return signer.sign(private, digest())

        signature = sign()

        def verify(signer: Any = signer, public: Any = public, sig: Any = signature) -> None:
            assert signer.verify(public, digest(), sig)

        budget_here = max(budget / 2, 0.5)  # slow: keep the run short, best-of-5 still holds
        rows.append(
            (
                "gostcrypto",
                name,
                ops_per_second(sign, budget_here),
                ops_per_second(verify, budget_here),
                None,
                "pure Python",
            )
        )
    return rows


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def print_table(rows: Sequence[Row]) -> None:
    header = (
        "library",
        "algorithm",
        "sign/s",
        "sign/CPU-s",
        "verify/s",
        "verify/CPU-s",
        "verify/s 2 threads",
        "note",
    )
    table = [header]
    for lib, alg, sign, verify, two, note in rows:
        table.append(
            (
                lib,
                alg,
                fmt(sign and sign.wall),
                fmt(sign and sign.cpu),
                fmt(verify and verify.wall),
                fmt(verify and verify.cpu),
                fmt(two),
                note,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        cells = [
            cell.ljust(widths[j]) if j in (0, 1, 7) else cell.rjust(widths[j])
            for j, cell in enumerate(row)
        ]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def describe_machine() -> None:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    loaded = native.lib()
    version = loaded.OpenSSL_version_num()
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average {load[0]:.2f}")
    print(f"python {platform.python_version()}, libcrypto {loaded._name} ({version:#x})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    budget = 0.3 if args.quick else 2.0
    describe_machine()
    rows = stellakeys_rows(budget) + gmssl_rows(budget) + gostcrypto_rows(budget)
    print_table(rows)
    print(
        f"target: >= {TARGET_VERIFY:,.0f} verify/s per stellakeys algorithm, single thread, "
        "judged on verify/CPU-s (what one free core does; wall-clock rates on a shared machine "
        "also count time spent waiting for the CPU)"
    )


if __name__ == "__main__":
    main()

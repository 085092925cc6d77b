"""``POST /v1/verify`` through the signer service against in-process ``KeyManager.verify``.

One run measures, on the same home (embedded SQLite store, Ed25519 proof, anchor pkg:npm/*):

* in-process: a warm ``KeyManager.verify`` of the stored proof by address, in a loop (before
  and after the service runs; the ratio uses their mean);
* the service on uvicorn with 1 worker and with 2 workers, 64 concurrent keep-alive
  connections, each request carrying a real ES256 bearer token -- throughput and p50/p99.

The load generator is ``wrk`` (C, event-driven, one thread by default) so that it takes a
small share of the cores being measured; ``--client httpx`` keeps the former Python load
generator (64 httpx async clients), which on 2 vCPUs eats most of a core by itself.

Ratios are computed within the run (the machine's load changes between runs); the load
average is printed before and after.

Run: ``PYTHONPATH=. python benchmarks/bench_server.py`` (``--seconds 8``, ``--quick``: 3 s,
``--client wrk|httpx``, ``--wrk-threads 1``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONCURRENCY = 64

# wrk's Lua script: the POST body and headers, and a machine-readable summary at the end
# (latency percentiles in microseconds, non-2xx answers and socket errors counted).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write, e.timeout, latency.mean))
end
"""


def make_app() -> Any:
    """uvicorn factory for the worker processes (``--workers`` needs an import string): the
    home from STELLAKEYS_HOME, the clock frozen at the benchmark's time so its tokens hold."""
    from stellakeys.clock import FrozenClock
    from stellakeys.config import load_settings
    from stellakeys.times import parse_time
    from stellakeys_server.app import create_app

    settings = load_settings(os.environ["STELLAKEYS_HOME"], None, None, "signer-svc")
    return create_app(settings, FrozenClock(parse_time(os.environ["BENCH_NOW"])))


def in_process(home: Path, digest: str, seconds: float) -> float:
    from stellakeys.clock import FrozenClock
    from stellakeys.manager import KeyManager
    from tests.server.server_support import T0

    with KeyManager.open(home, clock=FrozenClock(T0)) as m:
        assert m.verify(digest).ok  # warm: caches filled, result checked once
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            m.verify(digest)
            n += 1
        return n / (time.perf_counter() - start)


def start_service(
    home: Path, workers: int, http: str = "auto", loop: str = "auto"
) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    from tests.server.server_support import PASSPHRASE, T0, free_port

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "benchmarks"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": PASSPHRASE,
        "BENCH_NOW": T0.isoformat(),
    }
    code = (
        "import uvicorn; uvicorn.run('bench_server:make_app', factory=True,"
        f" host='127.0.0.1', port={port}, workers={workers}, log_level='warning',"
        f" access_log=False, http={http!r}, loop={loop!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the service did not start")


def check_once(url: str, token: str, body: bytes) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = httpx.post(url + "/v1/verify", content=body, headers=headers, timeout=30)
    if r.status_code != 200 or not r.json()["ok"]:
        raise SystemExit(f"verify failed: {r.status_code} {r.text[:200]}")


def load_wrk(
    url: str, token: str, body: bytes, seconds: float, threads: int
) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, p99 ms, requests) from wrk; refuses a run with any error."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": body.decode(), "BENCH_TOKEN": token}
    try:
        # Warm every worker and connection first (not measured).
        warm = ["wrk", "-t1", f"-c{CONCURRENCY}", "-d1s", "-s", f.name, url + "/v1/verify"]
        subprocess.run(warm, env=env, check=True, capture_output=True)
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{CONCURRENCY}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            f.name,
            url + "/v1/verify",
        ]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"^BENCH (.*)$", out, re.M)
    if found is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    n, duration_us, p50, p99, bad_status, sock_errors, timeouts, _mean = (
        int(v) for v in found.group(1).split()
    )
    if bad_status or sock_errors or timeouts:
        raise SystemExit(
            f"wrk: {bad_status} non-2xx, {sock_errors} socket errors, {timeouts} timeouts"
        )
    return n / (duration_us / 1e6), p50 / 1000, p99 / 1000, n


async def _load_httpx(
    url: str, token: str, body: bytes, seconds: float
) -> tuple[float, list[float]]:
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    # One client (one keep-alive connection) per simulated caller: a single shared httpx pool
    # of 64 connections spends more time in its own pool bookkeeping than the server spends.
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(CONCURRENCY)]
    try:
        await asyncio.gather(
            *(c.post("/v1/verify", content=body, headers=headers) for c in clients for _ in "ab")
        )
        stop = time.perf_counter() + seconds

        async def one_client(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await client.post("/v1/verify", content=body, headers=headers)
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or not r.json()["ok"]:
                    raise SystemExit(f"verify failed: {r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in clients))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return len(latencies) / elapsed, latencies


def load_httpx(
    url: str, token: str, body: bytes, seconds: float
) -> tuple[float, float, float, float]:
    rate, lat = asyncio.run(_load_httpx(url, token, body, seconds))
    ordered = sorted(lat)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return rate, pct(0.5), pct(0.99), len(lat)


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk")
    parser.add_argument("--wrk-threads", type=int, default=1)
    # uvicorn's "auto" picks httptools and uvloop when installed (uvicorn[standard]), else the
    # pure-Python h11 parser and asyncio's loop; these force one or the other.
    parser.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --client httpx")

    from tests.server.server_support import Issuer, prepare_home

    issuer = Issuer()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        home, facts = prepare_home(Path(tmp), issuer)
        digest = facts["proof"]
        token = issuer.token("bench@company.com", "proofs:verify")
        body = json.dumps({"proofBundle": digest}).encode()
        load_before = loadavg()
        client = f"wrk -t{args.wrk_threads}" if args.client == "wrk" else "httpx async"
        client += f"; uvicorn http={args.http} loop={args.loop}"
        print(f"python {platform.python_version()}, {os.cpu_count()} cpus,"
              f" load average {load_before}, {seconds:.0f} s per measurement,"
              f" {CONCURRENCY} connections ({client})")  # fmt: skip
        before = in_process(home, digest, seconds)
        print(f"in-process KeyManager.verify (warm), before: {before:,.0f} verifies/s")
        rows = []
        for workers in (1, 2):
            proc, url = start_service(home, workers, args.http, args.loop)
            try:
                check_once(url, token, body)
                if args.client == "wrk":
                    rate, p50, p99, n = load_wrk(url, token, body, seconds, args.wrk_threads)
                else:
                    rate, p50, p99, n = load_httpx(url, token, body, seconds)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            rows.append((workers, rate, p50, p99, n))
            print(f"service, {workers} worker(s): {rate:,.0f} req/s; p50 {p50:.1f} ms,"
                  f" p99 {p99:.1f} ms ({n:,.0f} requests)")  # fmt: skip
        after = in_process(home, digest, seconds)
        print(f"in-process KeyManager.verify (warm), after: {after:,.0f} verifies/s")
        base = statistics.fmean([before, after])
        load_after = loadavg()
        print()
        print("| run | verifies/s | ratio to in-process | p50 ms | p99 ms | requests |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        print(f"| in-process warm KeyManager.verify (mean of {before:,.0f} before,"
              f" {after:,.0f} after) | {base:,.0f} | 1.00 | | | |")  # fmt: skip
        for workers, rate, p50, p99, n in rows:
            print(
                f"| uvicorn, {workers} worker(s), {CONCURRENCY} connections | {rate:,.0f}"
                f" | {rate / base:.2f} | {p50:.1f} | {p99:.1f} | {n:,.0f} |"
            )
        print(f"load average before: {load_before}; after: {load_after}")


if __name__ == "__main__":
    main()

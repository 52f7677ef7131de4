"""Benchmark: request throughput with metrics recording on vs off.

    python bench/metrics_overhead.py [--requests 4000] [--concurrency 16] [--rounds 3] [--path /healthz]

Starts Relay's ASGI app twice under uvicorn (one process each, RELAY_METRICS_ENABLED=1 and =0;
with --multiprocess the "on" server also writes prometheus_client's multiprocess files), and
drives each with the same bounded closed-loop load from an async HTTP client. Rounds alternate
on/off so that the machine's drift hits both alike; the figure is the median of the rounds.
/healthz is the worst case for relative overhead: the request itself does almost nothing, so
the per-request metric work (route label, two counters, two histograms, django-prometheus's
middleware metrics) is the largest possible share of it. The last line is one JSON object.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import bound_socket  # noqa: E402  (the repository on the path first)


def start_server(enabled: bool, multiprocess_dir: str | None) -> tuple[subprocess.Popen, str, socket.socket]:
    sock = bound_socket(backlog=1024)
    env = {**os.environ, "RELAY_METRICS_ENABLED": "1" if enabled else "0", "DJANGO_SETTINGS_MODULE": "relay.settings"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if enabled and multiprocess_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "relay.asgi:application", "--fd", str(sock.fileno()), "--lifespan", "off",
         "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env, pass_fds=[sock.fileno()])
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url, sock
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


async def drive(url: str, path: str, requests: int, concurrency: int) -> float:
    """Requests per second for `requests` GETs with `concurrency` in flight (closed loop)."""
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker():
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.get(path)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: {response.status_code}")

        for _ in range(200):  # warm up (connections, caches)
            await client.get(path)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--multiprocess", action="store_true", help="metrics on: prometheus_client multiprocess files")
    args = parser.parse_args()

    metrics_dir = tempfile.mkdtemp(prefix="relay-bench-metrics-") if args.multiprocess else None
    servers = {True: start_server(True, metrics_dir), False: start_server(False, None)}
    rates = {True: [], False: []}
    try:
        for round_number in range(args.rounds):
            order = (True, False) if round_number % 2 == 0 else (False, True)
            for enabled in order:
                rate = asyncio.run(drive(servers[enabled][1], args.path, args.requests, args.concurrency))
                rates[enabled].append(rate)
                print(f"round {round_number + 1} metrics {'on ' if enabled else 'off'}: {rate:8.0f} req/s", flush=True)
    finally:
        for process, _url, sock in servers.values():
            process.terminate()
            process.wait(timeout=10)
            sock.close()
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    overhead = (off - on) / off * 100
    print(json.dumps({"path": args.path, "requests": args.requests, "concurrency": args.concurrency,
                      "rounds": args.rounds, "multiprocess": args.multiprocess,
                      "rps_metrics_on": round(on), "rps_metrics_off": round(off),
                      "overhead_pct": round(overhead, 2), "meets_target": overhead < 5}))


if __name__ == "__main__":
    main()

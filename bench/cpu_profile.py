"""Where Relay's CPU goes per request, by function, back to back and after idle time: a sampling profiler.

Run: python bench/cpu_profile.py [--requests 1000] [--kind stream|plain] [--pause-ms 50] [--top 45]

Starts what `bench/load.py` measures idle (the static upstream, one `relay.serve` on its own
database, a hard budget on the key), its process sampled by `bench/_sampler/sitecustomize.py`: at
each tick of the process's CPU time the kernel interrupts it and the event loop's stack is counted,
which costs a stack walk per tick (about 4 ms of CPU apart here), not a wrapper per call as a tracer
or cProfile does (cProfile made the model call's Python about ten times slower, so its shares were
not the untraced ones). Then `--requests` requests one at a time, back to back, and as many again
each after `--pause-ms` of idle time (as `bench/stream_latency.py` sends them), each phase's samples
kept apart (the warm-up's and the start's are left out). For each function, the CPU milliseconds per
request spent in it and in what it called (inclusive: a function counts once per sample however deep
it recurs), in both phases, and their ratio. A statistical figure: a function below about 1% of the
phase's samples is noise. The last line is one JSON object.

py-spy, the usual tool, does not attach on this machine ("Failed to find python version").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from _relay import ROOT, print_result
from load import Bench, timed  # noqa: I001  (bench-local helpers)

WARM = 20
PHASES = ("back_to_back", "idle")
# Frames every sample has (the server's, the loop's): their share is the phase's total, shown as such.
_OUTER = ("<frozen ", "stdlib/asyncio/runners.py:", "stdlib/asyncio/base_events.py:", "uvicorn/server.py:",
          "uvicorn/_compat.py:", "relay/serve.py:")


def per_request(phase: dict, requests: int) -> dict[str, float]:
    """{function: CPU ms per request spent in it or below it} of one phase's samples."""
    stacks = phase["stacks"]
    samples = sum(count for _, count in stacks)
    if not samples or not requests:
        return {}
    each = phase["cpu_s"] * 1000 / samples / requests  # one sample's CPU, per request
    inclusive = collections.Counter()
    for stack, count in stacks:
        for function in set(stack):
            inclusive[function] += count * each
    return dict(inclusive)


def table(phases: dict[str, dict[str, float]], top: int) -> list[dict]:
    """The `top` functions by CPU after idle time (the loop's outermost frames left out), each with
    its ms per request in both phases and their ratio."""
    back, idle = phases["back_to_back"], phases["idle"]
    names = [name for name in sorted(set(back) | set(idle), key=lambda n: (-idle.get(n, 0), n))
             if not name.startswith(_OUTER)]
    return [{"function": name, "back_to_back_ms": round(back.get(name, 0), 3), "idle_ms": round(idle.get(name, 0), 3),
             "ratio": round(idle.get(name, 0) / back[name], 2) if back.get(name) else None}
            for name in names[:top]]


def end_phase(pid: int, sample_dir: Path, number: int) -> dict:
    """Have the sampled process write its phase `number` (SIGUSR2) and read it."""
    path = sample_dir / f"samples-{pid}-{number}.json"
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())  # written whole (renamed into place)
        except FileNotFoundError:
            time.sleep(0.05)
    raise RuntimeError(f"the sampled Relay wrote no {path.name}")


async def send(url: str, kind: str, headers: dict, requests: int, pause_s: float) -> list[float]:
    samples = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(requests):
            if pause_s:
                await asyncio.sleep(pause_s)
            samples.append(await timed(client, url, kind, headers))
    return samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--kind", choices=("stream", "plain"), default="stream")
    parser.add_argument("--pause-ms", type=float, default=50)
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    if args.requests < 1 or args.pause_ms < 0:
        parser.error("--requests must be at least 1 and --pause-ms not negative")
    sample_dir = Path(tempfile.mkdtemp(prefix="relay-samples-"))
    os.environ.update({"RELAY_SAMPLE_DIR": str(sample_dir),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench" / "_sampler"),
                                                                    os.environ.get("PYTHONPATH")]))})
    bench = Bench(argparse.Namespace(upstream="static", tokens=20, litellm=False, floors=False, idle_requests=0))
    url, pid = bench.relay.url + bench.relay_paths[args.kind], bench.relay.process.pid
    latency, measured = {}, {}
    try:
        asyncio.run(send(url, args.kind, bench.auth, WARM, 0))
        end_phase(pid, sample_dir, 1)  # the start and the warm-up: not counted
        for number, (name, pause_s) in enumerate(zip(PHASES, (0, args.pause_ms / 1000), strict=True), start=2):
            samples = asyncio.run(send(url, args.kind, bench.auth, args.requests, pause_s))
            phase = end_phase(pid, sample_dir, number)
            latency[name] = round(statistics.median(samples) * 1000, 2)
            measured[name] = {"cpu_ms_per_request": round(phase["cpu_s"] * 1000 / args.requests, 3),
                              "samples": sum(count for _, count in phase["stacks"])}
            measured[name]["functions"] = per_request(phase, args.requests)
    finally:
        bench.relay.stop()
        bench.stop_upstream()
        bench.paced.terminate()
        shutil.rmtree(sample_dir, ignore_errors=True)
    rows = table({name: measured[name].pop("functions") for name in PHASES}, args.top)
    print(f"{args.kind}, {args.requests} requests per phase; idle: each after {args.pause_ms:g} ms")
    for name in PHASES:
        print(f"  {name:13} p50 {latency[name]:7.2f} ms  Relay's CPU {measured[name]['cpu_ms_per_request']:.3f} ms "
              f"per request ({measured[name]['samples']} samples)")
    print("  back to back   idle (CPU ms per request, inclusive)")
    for row in rows:
        ratio = f"x{row['ratio']:.2f}" if row["ratio"] is not None else "     "
        print(f"  {row['back_to_back_ms']:8.3f}  {row['idle_ms']:8.3f}  {ratio}  {row['function']}")
    print_result({"kind": args.kind, "requests": args.requests, "pause_ms": args.pause_ms,
                  "p50_ms": latency, "phases": measured, "functions": rows})


if __name__ == "__main__":
    main()

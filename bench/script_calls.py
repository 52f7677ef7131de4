"""Benchmark: what one Lua script call through `relay.redis_scripts.ScriptRunner` costs the client.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/script_calls.py [--calls 8000] [--rounds 3] \
        [--runner path/to/redis_scripts.py]

The ledger's and the router's scripts (about five calls per model call) go through the runner on
the event loop, which is what one busy Relay process runs out of, so the figure that matters is
the client's CPU per call: measured with getrusage over `--calls` calls of a trivial script on
uvloop, the calls made one at a time (`width 1`: an idle request's reserve or settle) and eight
at once (`width 8`: a loaded process, where a turn's calls share one trip), beside the wall time
per trip. `--runner` measures another version of the module (a file saved from an older commit)
in the same rounds, alternated, for an A/B on one machine. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay import redis_clients  # noqa: E402  (the repository on the path first)

SCRIPT = "return ARGV[1]"


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"runner_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(module, url: str, calls: int, width: int) -> dict:
    # The ledger's client settings (billing/ledger_redis.py).
    client = redis_clients.async_client(redis_clients.Target(url), max_connections=64, pool_timeout=5,
                                        socket_connect_timeout=1, socket_timeout=2, decode_responses=True)
    runner = module.ScriptRunner(client)
    try:
        await runner.run(SCRIPT, ("warm",))  # loads the script, opens the connection
        trips = calls // width
        cpu, started = _cpu(), time.perf_counter()
        for _ in range(trips):
            await asyncio.gather(*(runner.run(SCRIPT, (str(i),)) for i in range(width)))
        cpu, wall = _cpu() - cpu, time.perf_counter() - started
    finally:
        await client.aclose()
    return {"cpu_us_per_call": cpu / (trips * width) * 1e6, "wall_us_per_trip": wall / trips * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runner", type=Path, help="another redis_scripts.py to measure beside this checkout's")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    versions = {"this checkout": _module(ROOT / "relay" / "redis_scripts.py")}
    if args.runner:
        versions[str(args.runner)] = _module(args.runner)
    samples: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, module in versions.items():
            for width in (1, 8):
                samples.setdefault(f"{name}, width {width}", []).append(
                    uvloop.run(_measure(module, url, args.calls, width)))
    figures = {}
    for label, runs in samples.items():
        figures[label] = {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
        print(f"{label:60} {figures[label]['cpu_us_per_call']:7.1f} µs CPU a call, "
              f"{figures[label]['wall_us_per_trip']:7.0f} µs a trip (median of {len(runs)})")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()

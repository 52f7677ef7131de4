"""What each guarantee costs a plain /v1 request: Relay's CPU split by the part of the request that spent it.

    python bench/guarantee_costs.py [--seconds 15] [--concurrency 32]
    (DATABASE_URL and REDIS_URL point at PostgreSQL and Redis: the production configuration)

One `relay.serve` process in front of the static upstream (bench/_static_upstream.py), the same
load as bench/load.py's plain figure, while py-spy samples the process (`record --gil --format
raw`: only the thread holding the interpreter, so the samples are Python's CPU, the database
threads' included). Each sample is given to the first part of the request whose code is on its
stack (PARTS, in order: a sample in the audit append inside the closing counts as the audit's);
the rest is the HTTP exchange, Django and the middleware. Relay's CPU per request, read from
/proc, is split by those shares; PostgreSQL's and Redis's CPU per request are measured beside
it, and the Django floor (bench/_floor_app.py: the same proxying behind Relay's middleware, with
no guarantee) is measured after it for comparison. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cpu import Components, per_request, postgres_of
from _litellm import wait_http
from _load import figures, run_load
from _relay import ROOT, RelayInstance, free_port, print_result
from _static_upstream import StaticUpstream
from load import BUDGET, MODELS, body, start_floor

# (part, what on the stack marks it), first match wins: the order nests the parts inside each other.
PARTS = [
    ("audit append (agent.run event, hash chain)", r"audit/services\.py|audit/pg_append\.py"),
    ("closing: settle script, usage record, stored answer", r"_close_many|_close_one|settle_run|commit_run|"
                                                            r"_forget_closings|_finish \(agents|_commit \(agents"),
    ("opening: conversation and message rows", r"_open_many|_open_one|open_run"),
    ("budget reservation, rate limits, admission", r"open_charge|billing/ledger|ratelimit|heavy\.py"),
    ("routing: deployment acquire and release", r"agents/router/(state|__init__|leases)|_Attempt\._close"),
    ("upstream call (aiohttp, the answer's parse)", r"providers/openai_compat|aiohttp|_Attempt"),
    ("API key authentication", r"_authenticate"),
    ("reads: agent, history, price and budgets", r"_prepare_reads|optimizer"),
    ("body validation, run, /v1 response", r"agents/runner|agents/api|fallbacks|agents/upstream\.py"),
    ("metrics", r"prometheus_client|observability/metrics|ViewMetrics|Prometheus(Before|After)|agents/metrics"),
    ("hand-offs to the database threads", r"eventloop/db\.py|concurrent/futures"),
    ("other Redis client work", r"redis/"),
]
FRAMEWORK = "HTTP, Django, middleware, event loop"


def shares(raw: Path) -> dict[str, float]:
    """Each part's share of the samples in a py-spy raw (folded) file."""
    counts, total = collections.Counter(), 0
    compiled = [(name, re.compile(pattern)) for name, pattern in PARTS]
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        counts[next((name for name, pattern in compiled if pattern.search(stack)), FRAMEWORK)] += int(count)
    return {name: counts[name] / total for name in [*(n for n, _ in PARTS), FRAMEWORK]} if total else {}


def measure(url: str, seconds: float, concurrency: int, components: Components, headers: dict,
            spy_pid: int | None = None) -> tuple[dict, dict]:
    """(figures with CPU ms per request, the parts' shares if py-spy sampled `spy_pid`)."""
    asyncio.run(run_load(url, "/v1/chat/completions", body("plain"), headers=headers, concurrency=concurrency,
                         seconds=2))  # warm: connections, caches, the first group-commit batches
    spy, raw = None, Path(tempfile.mkdtemp(prefix="relay-spy-")) / "samples.txt"
    if spy_pid:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--format", "raw",
                                "--rate", "200", "--pid", str(spy_pid), "--output", str(raw),
                                "--duration", str(int(seconds))], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1)  # py-spy attaches before the window opens
    result = asyncio.run(run_load(url, "/v1/chat/completions", body("plain"), headers=headers,
                                  concurrency=concurrency, seconds=seconds, warmup=0, snapshot=components.snapshot))
    figure = figures(result)
    before, after = result.snapshots
    figure["cpu_ms_per_request"] = per_request(before, after, figure["requests"] + figure["errors"])
    if spy is None:
        return figure, {}
    spy.wait(timeout=seconds + 60)
    return figure, shares(raw) if raw.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    static = StaticUpstream(free_port(), MODELS["plain"], MODELS["stream"])
    wait_http(f"{static.url}/plain/v1/models")
    bases = {kind: static.base(kind) for kind in MODELS}
    relay = RelayInstance({MODELS[kind]: bases[kind] for kind in MODELS}, server="relay.serve",
                          extra_env={"RELAY_CACHE_PREFIX": f"bench{time.time_ns()}"})
    floor = None
    try:
        relay.run_manage("shell", "-c", BUDGET)
        components = Components({"relay": [relay.process.pid], "upstream nginx": [static.process.pid]},
                                {"postgresql": ("postgres", postgres_of(relay.dbname or "")), "redis": "redis-server"})
        figure, parts = measure(relay.url, args.seconds, args.concurrency, components,
                                {"Authorization": f"Bearer {relay.key}"}, spy_pid=relay.process.pid)
        floor, floor_url = start_floor("django", bases, relay.env)
        floor_figure, _ = measure(floor_url, args.seconds, args.concurrency,
                                  Components({"floor_django": [floor.pid]}, {}), {})
        books = relay.reconcile()
    finally:
        if floor is not None:
            floor.terminate()
        relay.stop()
        static.stop()
    report(figure, parts, floor_figure, books)


def report(figure: dict, parts: dict, floor_figure: dict, books: dict) -> None:
    cpu = figure["cpu_ms_per_request"]
    relay_ms, floor_ms = cpu.get("relay", 0.0), floor_figure["cpu_ms_per_request"].get("floor_django", 0.0)
    print(f"Relay: {figure['rps']:.1f} req/s, {relay_ms:.2f} ms of Relay's CPU per plain request "
          f"(+ PostgreSQL {cpu.get('postgresql', 0):.2f}, Redis {cpu.get('redis', 0):.2f}); "
          f"Django floor: {floor_figure['rps']:.1f} req/s, {floor_ms:.2f} ms")
    costs = {name: round(share * relay_ms, 3) for name, share in parts.items()}
    for name, share in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"  {100 * share:5.1f}%  {costs[name]:5.2f} ms  {name}")
    print(f"reconcile: {'OK' if books.get('ok') else 'NOT CLEAN'}")
    print_result({"relay": figure, "parts_ms_per_request": costs, "floor_django": floor_figure,
                  "reconcile_ok": bool(books.get("ok"))})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

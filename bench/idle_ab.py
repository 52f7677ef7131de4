"""Idle A/B: two settings of Relay, side by side on one database, answering single requests in turn.

Run: python bench/idle_ab.py --a-env NAME=VALUE ... --b-env NAME=VALUE ... [--requests 300] [--b-cwd CHECKOUT]

What `bench/load.py`'s idle phase measures (one plain request at a time, then one stream's first
token), for two `relay.serve` processes of this checkout on one database and one static upstream,
each with its own environment (and side B, with `--b-cwd`, another checkout's code): request by request, A then B, then B then A, so that whatever the
machine does meanwhile falls on both alike. On this 2-core VM, consecutive load.py runs of one
build differ by up to a millisecond in idle latency; interleaved request by request, an A/A run
(both sides the same) differed by 0.15 ms (bench/README.md).

`--block N` sends N requests in a row to one side before turning to the other: what a request
leaves running after its answer (its closing's commit) then meets the same process's next request,
as in load.py's idle phase, instead of the other process's. Prints, per kind, each side's median
(the whole time, the upstream's own included) and B's difference; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

import httpx
from _relay import print_result
from load import MODELS, Bench, timed  # noqa: I001  (bench-local helpers)

WARM = 20  # requests per side before the measured ones: connections, caches


def pairs(env: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in env)


async def interleaved(urls: dict[str, str], headers: dict, requests: int, block: int = 1) -> dict:
    out = {}
    async with httpx.AsyncClient(timeout=30) as a, httpx.AsyncClient(timeout=30) as b:
        clients = {"A": a, "B": b}
        for kind in MODELS:
            samples = {"A": [], "B": []}
            for index in range(0, requests + WARM, block):
                for side in ("A", "B") if (index // block) % 2 else ("B", "A"):
                    for inner in range(block):
                        seconds = await timed(clients[side], urls[side] + "/v1/chat/completions", kind, headers)
                        if index + inner >= WARM:
                            samples[side].append(seconds)
            medians = {side: round(statistics.median(values) * 1000, 3) for side, values in samples.items()}
            out[kind] = {"A_p50_ms": medians["A"], "B_p50_ms": medians["B"],
                         "B_minus_A_ms": round(medians["B"] - medians["A"], 3)}
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--a-env", nargs="*", default=[])
    parser.add_argument("--b-env", nargs="*", default=[])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--block", type=int, default=1)
    parser.add_argument("--b-cwd", default=None, help="the checkout side B runs (default: this one)")
    args = parser.parse_args()
    a_env, b_env = pairs(args.a_env), pairs(args.b_env)
    before = {name: os.environ.get(name) for name in a_env}
    os.environ.update(a_env)  # side A is the bench's own instance: it takes this process's environment
    bench = Bench(argparse.Namespace(upstream="static", tokens=20, litellm=False, floors=False, idle_requests=0))
    for name, value in before.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value
    process_b, url_b = bench.relay.spawn("relay.serve", env={**{name: os.environ.get(name, "") for name in a_env},
                                                             **b_env}, **({"cwd": args.b_cwd} if args.b_cwd else {}))
    try:
        result = asyncio.run(interleaved({"A": bench.relay.url, "B": url_b}, bench.auth, args.requests, args.block))
    finally:
        process_b.terminate()
        process_b.wait(60)
        bench.relay.stop()
        bench.stop_upstream()
        bench.paced.terminate()
    for kind, figures in result.items():
        print(f"{kind:6}  A {figures['A_p50_ms']:.3f} ms  B {figures['B_p50_ms']:.3f} ms  "
              f"B - A {figures['B_minus_A_ms']:+.3f} ms")
    print_result({"a_env": a_env, "b_env": b_env, "b_cwd": args.b_cwd, "requests": args.requests, "block": args.block, **result})


if __name__ == "__main__":
    main()

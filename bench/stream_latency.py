"""Streaming latency: what Relay adds to time to first token and per token, over the upstream itself.

Run: python bench/stream_latency.py [--requests 100] [--tokens 50] [--ttft-ms 50] [--trace] [--b-cwd ../other-checkout]

Starts the fake OpenAI-compatible upstream (fixed time to first token and token rate) and one
Relay instance (its own database; `relay.serve`, the production launcher, whose loop commits a
run's closing after the answer; `--server uvicorn` for the bare server) with a model on that
upstream, then streams the same completion directly from the upstream and through Relay's SSE,
WebSocket and /v1/chat/completions endpoints, one request at a time, the paths taking turns in an order shuffled each round,
each request after --pause-ms (50) of idle time, so that it starts on an idle machine: not
beside what its predecessor left running (a closing's commit, a WebSocket's teardown). Prints p50/p99 of time
to first token and of the time per token after the first; the last line is one JSON object with
every figure. On PostgreSQL the guarded floor (bench/_floor_app.py guarded: the key's reservation,
the run's row committed, then the model; no permissions, rate limits, routing, metrics) takes its
turns too on /v1 (`floor_guarded_openai`): what Relay's guarantees add at the least, in this run.

Each path's first token is also split in two by the upstream's own notes (`GET /_control`: when each
stream arrived and when it sent its first token, on the one monotonic clock of every process here):
the time from the client's sending to the upstream's arrival (`to_upstream`: for Relay, its whole path
up to the model call) and from the upstream's first token to the client's (`from_upstream_first_token`:
the chunk's way back). Minus the direct path's, they say where Relay's added first token is spent.
`--trace` also loads bench/idle_spans.py's span tracer into this checkout's Relay and prints the timeline
of its /v1 requests after the pause (each traced call costs a few microseconds more: read the gaps).

`--b-cwd ../other-checkout` serves that checkout too, as a second process on the same database, and its
paths (b_sse, b_websocket, b_openai) take turns with this one's request by request: an A/B in which the
machine's drift (up to ±1 ms between runs minutes apart here) falls on both sides alike. Prints B − A.

The upstream runs as its own process, not a thread of this one: sharing this process's interpreter
lock, it would answer Relay's model call only after this client had read Relay's response headers,
which Relay sends at nearly the same moment, so the measure would charge Relay for the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _goals as goals
import httpx
import websockets
from _litellm import wait_http  # noqa: I001  (bench-local helpers)
from _relay import ROOT, RelayInstance, free_port, print_interpreter, print_result, summary_ms
from idle_spans import SPANS, print_timeline, requests_of, timeline
from load import start_floor

MODEL = "bench-model"
WARM_ROUNDS = 3


async def sse_tokens(client: httpx.AsyncClient, url: str, body: dict, headers: dict, is_token):
    """(seconds to first token, seconds per later token, when it was sent, when its first token came) for
    one streamed request; the times on time.monotonic(), the clock the upstream notes its own on."""
    started = time.monotonic()
    first = last = None
    count = 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if is_token(json.loads(line[6:])):
                last = time.monotonic()
                first = first or last
                count += 1
    return first - started, (last - first) / max(count - 1, 1), started, first


async def ws_tokens(url: str, key: str, body: dict):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": key}))
        await ws.recv()
        started = time.monotonic()
        await ws.send(json.dumps({"type": "query", **body}))
        first = last = None
        count = 0
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "token":
                last = time.monotonic()
                first = first or last
                count += 1
            elif event["type"] == "done":
                return first - started, (last - first) / max(count - 1, 1), started, first


def split(sent_at: float, first_at: float, streams: list) -> tuple[float, float] | None:
    """(seconds from the request's sending to its arrival at the upstream, seconds from the upstream's
    first token to the client's), from the upstream's [arrival, first token] of the streams that arrived
    since `sent_at`: what a gateway in front adds before the model is asked and after it answers.
    None unless exactly one stream arrived (a retry or a stray request would be matched wrongly)."""
    if len(streams) != 1:
        return None
    arrived, first_sent = streams[0]
    return arrived - sent_at, first_at - first_sent


async def upstream_split(client: httpx.AsyncClient, control_url: str, sent_at: float,
                         first_at: float) -> tuple[float, float] | None:
    stats = (await client.get(control_url, params={"since": repr(sent_at)})).json()
    return split(sent_at, first_at, stats["streams"])


def is_openai_token(chunk) -> bool:
    return bool(chunk.get("choices") and chunk["choices"][0]["delta"].get("content"))


def is_relay_token(event) -> bool:
    return event.get("type") == "token"


async def measure(relay: RelayInstance, upstream_base: str, requests: int, pause: float,
                  b_url: str | None = None, floor_url: str | None = None) -> dict:
    key = {"Authorization": f"Bearer {relay.key}"}
    counter = iter(range(10**9))

    # Each request asks something new, so Relay's response cache never answers in the model's place.
    def chat():
        return {"model": MODEL, "messages": [{"role": "user", "content": f"benchmark {next(counter)}"}],
                "stream": True}

    def query():
        return {"query": f"benchmark {next(counter)}", "agent_type": "general", "model": MODEL}

    def through(url: str, prefix: str) -> dict:
        ws_url = url.replace("http://", "ws://") + "/ws/chat/"
        return {
            f"{prefix}_sse": lambda c: sse_tokens(c, f"{url}/api/v1/stream", query(), key, is_relay_token),
            f"{prefix}_websocket": lambda c: ws_tokens(ws_url, relay.key, query()),
            f"{prefix}_openai": lambda c: sse_tokens(c, f"{url}/v1/chat/completions", chat(), key, is_openai_token),
        }

    paths = {
        "direct": lambda c: sse_tokens(c, f"{upstream_base}/chat/completions", chat(), {}, is_openai_token),
        **through(relay.url, "relay"), **(through(b_url, "b") if b_url else {}),
    }
    if floor_url:  # the guarded floor answers /v1 only
        paths["floor_guarded_openai"] = lambda c: sse_tokens(c, f"{floor_url}/v1/chat/completions", chat(), key,
                                                             is_openai_token)
    samples = {name: ([], []) for name in paths}
    splits = {name: [] for name in paths}
    control_url = upstream_base.removesuffix("/v1") + "/_control"
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(WARM_ROUNDS):  # warm connections, caches, the model list
            for run in paths.values():
                await run(client)
        names, order = list(paths), random.Random(0)
        for _ in range(requests):
            # Interleaved, so machine drift hits every path alike, in an order shuffled each round.
            # Rotating a fixed order left each path behind the same other one: back to back, /v1 always
            # met the WebSocket's teardown and closing (+2 ms p50), and even after a pause the path
            # behind the direct request met a machine idle for longer (+0.9 ms in an A/A run). So each
            # request starts on an idle Relay, its predecessor's work done, behind any other path.
            order.shuffle(names)
            for name in names:
                ttft, per_token, sent_at, first_at = await paths[name](client)
                samples[name][0].append(ttft)
                samples[name][1].append(per_token)
                parts = await upstream_split(client, control_url, sent_at, first_at)
                if parts is not None:
                    splits[name].append(parts)
                await asyncio.sleep(pause)
    figures = {}
    for name, (ttfts, per_tokens) in samples.items():
        figures[name] = {"ttft": summary_ms(ttfts), "per_token": summary_ms(per_tokens)}
        if splits[name]:
            figures[name]["to_upstream"] = summary_ms([before for before, _ in splits[name]])
            figures[name]["from_upstream_first_token"] = summary_ms([after for _, after in splits[name]])
    direct = figures["direct"]
    for name in [name for name in figures if name != "direct"]:
        figures[name]["ttft_overhead_p50_ms"] = round(figures[name]["ttft"]["p50_ms"] - direct["ttft"]["p50_ms"], 2)
        figures[name]["ttft_overhead_p99_ms"] = round(figures[name]["ttft"]["p99_ms"] - direct["ttft"]["p99_ms"], 2)
        figures[name]["per_token_overhead_p50_ms"] = round(
            figures[name]["per_token"]["p50_ms"] - direct["per_token"]["p50_ms"], 3)
        for part in ("to_upstream", "from_upstream_first_token"):
            if part in figures[name] and part in direct:
                figures[name][f"{part}_added_p50_ms"] = round(
                    figures[name][part]["p50_ms"] - direct[part]["p50_ms"], 2)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--ttft-ms", type=float, default=50)
    parser.add_argument("--tps", type=float, default=500)
    parser.add_argument("--server", default="relay.serve", choices=["relay.serve", "uvicorn"])
    parser.add_argument("--pause-ms", type=float, default=50,
                        help="idle time after each request (0: back to back)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="without the guarded floor's /v1 (PostgreSQL only): its added first token is the "
                             "least Relay's guarantees add in sequence, on this machine, in this run")
    parser.add_argument("--trace", action="store_true",
                        help="trace the hot path's spans in this checkout's Relay (bench/idle_spans.py's tracer, a few "
                             "microseconds per traced call) and print the timeline of its /v1 requests")
    parser.add_argument("--b-cwd", help="another checkout, served beside this one on the same database: its "
                                        "paths (b_*) take turns with this one's, request by request")
    args = parser.parse_args()
    print_interpreter()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port),
                                 "--ttft", str(args.ttft_ms / 1000), "--tps", str(args.tps), "--tokens",
                                 str(args.tokens)], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{base}/models", process=upstream)
        # A prefix of its own, so that stop() drops the run's keys (the response cache's, the ledger's) from Redis.
        relay = RelayInstance({MODEL: base}, server=args.server,
                              extra_env={"RELAY_CACHE_PREFIX": f"bench{time.time_ns()}", **tracing(args.trace)})
        traced = relay.process.pid
        other = floor = None
        try:
            other = relay.spawn(args.server, cwd=args.b_cwd) if args.b_cwd else None
            if args.floor and relay.dbname:
                floor = start_floor("guarded", {"plain": base}, {**untraced(relay.env), "RELAY_FLOOR_KEY": relay.key},
                                    {"Authorization": f"Bearer {relay.key}"}, models={"plain": MODEL})
            figures = asyncio.run(measure(relay, base, args.requests, args.pause_ms / 1000,
                                          other[1] if other else None, floor[1] if floor else None))
        finally:
            for process in (other, floor):
                if process:
                    process[0].terminate()
                    process[0].wait(60)
            relay.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)
    for name, figure in figures.items():
        line = f"{name:16} ttft p50 {figure['ttft']['p50_ms']:7.2f} ms  p99 {figure['ttft']['p99_ms']:7.2f} ms  " \
               f"per token p50 {figure['per_token']['p50_ms']:6.3f} ms"
        if "ttft_overhead_p50_ms" in figure:
            line += f"  | added ttft p50 {figure['ttft_overhead_p50_ms']:+.2f} ms"
        if "to_upstream_added_p50_ms" in figure and "from_upstream_first_token_added_p50_ms" in figure:
            line += (f" (before the upstream {figure['to_upstream_added_p50_ms']:+.2f}, after its first token "
                     f"{figure['from_upstream_first_token_added_p50_ms']:+.2f})")
        print(line)
    if args.b_cwd:
        for path in ("sse", "websocket", "openai"):
            figures[f"b_{path}"]["minus_a_p50_ms"] = round(
                figures[f"b_{path}"]["ttft"]["p50_ms"] - figures[f"relay_{path}"]["ttft"]["p50_ms"], 2)
            print(f"b - a, {path:9} ttft p50 {figures[f'b_{path}']['minus_a_p50_ms']:+.2f} ms")
    if "floor_guarded_openai" in figures:
        floor_added = figures["floor_guarded_openai"]["ttft_overhead_p50_ms"]
        print(f"/v1 over the guarded floor: {figures['relay_openai']['ttft_overhead_p50_ms'] - floor_added:+.2f} ms "
              f"(the floor adds {floor_added:+.2f} ms)")
    if args.trace:
        figures["trace_openai"] = print_trace(relay.env["RELAY_SPANS_DIR"], traced)
    met = goals.check_stream_latency(figures)
    print(goals.report(met))
    print_result({"requests": args.requests, "tokens": args.tokens, "upstream_ttft_ms": args.ttft_ms,
                  "pause_ms": args.pause_ms,
                  "server": args.server, **figures, "goals": met})


def tracing(on: bool) -> dict:
    """The environment that loads the span tracer into Relay's processes (none unless `on`)."""
    if not on:
        return {}
    return {"RELAY_SPANS": ",".join(SPANS), "RELAY_SPANS_DIR": tempfile.mkdtemp(prefix="relay-spans-"),
            "PYTHONPATH": str(ROOT / "bench" / "_spans")}


def untraced(env: dict) -> dict:
    """`env` without the tracer (for the guarded floor, whose app the tracer's wrappers would break)."""
    return {name: value for name, value in env.items() if name != "RELAY_SPANS"}


def print_trace(spans_dir: str, pid: int) -> list[dict]:
    """The timeline of the traced Relay's /v1 requests (its view's), after the warm-up's."""
    served = requests_of(json.loads((Path(spans_dir) / f"spans-{pid}.json").read_text()))[WARM_ROUNDS:]
    rows = timeline(served)
    print(f"\n/v1 traced ({len(served)} requests; offsets from the ASGI handler's start, ms):")
    print_timeline(rows)
    return rows


if __name__ == "__main__":
    main()

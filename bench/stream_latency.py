"""Streaming latency: what Relay adds to time to first token and per token, over the upstream itself.

Run: python bench/stream_latency.py [--requests 100] [--tokens 50] [--ttft-ms 50]

Starts the fake OpenAI-compatible upstream (fixed time to first token and token rate) and one
Relay instance (its own database; `relay.serve`, the production launcher, whose loop commits a
run's closing after the answer; `--server uvicorn` for the bare server) with a model on that
upstream, then streams the same completion directly from the upstream and through Relay's SSE,
WebSocket and /v1/chat/completions endpoints, one request at a time, the paths taking turns in a rotating order,
each request after --pause-ms (50) of idle time, so that it starts on an idle machine: not
beside what its predecessor left running (a closing's commit, a WebSocket's teardown). Prints p50/p99 of time
to first token and of the time per token after the first; the last line is one JSON object with
every figure.

The upstream runs as its own process, not a thread of this one: sharing this process's interpreter
lock, it would answer Relay's model call only after this client had read Relay's response headers,
which Relay sends at nearly the same moment, so the measure would charge Relay for the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

import httpx
import websockets
from _litellm import wait_http  # noqa: I001  (bench-local helpers)
from _relay import ROOT, RelayInstance, free_port, print_result, summary_ms

MODEL = "bench-model"


async def sse_tokens(client: httpx.AsyncClient, url: str, body: dict, headers: dict, is_token):
    """(seconds to first token, seconds per later token) for one streamed request."""
    started = time.perf_counter()
    first = last = None
    count = 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if is_token(json.loads(line[6:])):
                last = time.perf_counter()
                first = first or last
                count += 1
    return first - started, (last - first) / max(count - 1, 1)


async def ws_tokens(url: str, key: str, body: dict):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": key}))
        await ws.recv()
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "query", **body}))
        first = last = None
        count = 0
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "token":
                last = time.perf_counter()
                first = first or last
                count += 1
            elif event["type"] == "done":
                return first - started, (last - first) / max(count - 1, 1)


def is_openai_token(chunk) -> bool:
    return bool(chunk.get("choices") and chunk["choices"][0]["delta"].get("content"))


def is_relay_token(event) -> bool:
    return event.get("type") == "token"


async def measure(relay: RelayInstance, upstream_base: str, requests: int, pause: float) -> dict:
    key = {"Authorization": f"Bearer {relay.key}"}
    ws_url = relay.url.replace("http://", "ws://") + "/ws/chat/"
    counter = iter(range(10**9))

    # Each request asks something new, so Relay's response cache never answers in the model's place.
    def chat():
        return {"model": MODEL, "messages": [{"role": "user", "content": f"benchmark {next(counter)}"}],
                "stream": True}

    def query():
        return {"query": f"benchmark {next(counter)}", "agent_type": "general", "model": MODEL}

    paths = {
        "direct": lambda c: sse_tokens(c, f"{upstream_base}/chat/completions", chat(), {}, is_openai_token),
        "relay_sse": lambda c: sse_tokens(c, f"{relay.url}/api/v1/stream", query(), key, is_relay_token),
        "relay_websocket": lambda c: ws_tokens(ws_url, relay.key, query()),
        "relay_openai": lambda c: sse_tokens(c, f"{relay.url}/v1/chat/completions", chat(), key, is_openai_token),
    }
    samples = {name: ([], []) for name in paths}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # warm connections, caches, the model list
            for run in paths.values():
                await run(client)
        names = list(paths)
        for index in range(requests):
            # Interleaved, so machine drift hits every path alike, and rotated. Rotating a fixed order
            # leaves each path behind the same other one, though: back to back, /v1 always met the
            # WebSocket's teardown and closing (+2 ms p50) and SSE a Relay idle since its previous
            # request. So each request starts on an idle Relay, its predecessor's work done.
            for name in names[index % len(names):] + names[:index % len(names)]:
                ttft, per_token = await paths[name](client)
                samples[name][0].append(ttft)
                samples[name][1].append(per_token)
                await asyncio.sleep(pause)
    figures = {}
    for name, (ttfts, per_tokens) in samples.items():
        figures[name] = {"ttft": summary_ms(ttfts), "per_token": summary_ms(per_tokens)}
    direct = figures["direct"]
    for name in ("relay_sse", "relay_websocket", "relay_openai"):
        figures[name]["ttft_overhead_p50_ms"] = round(figures[name]["ttft"]["p50_ms"] - direct["ttft"]["p50_ms"], 2)
        figures[name]["ttft_overhead_p99_ms"] = round(figures[name]["ttft"]["p99_ms"] - direct["ttft"]["p99_ms"], 2)
        figures[name]["per_token_overhead_p50_ms"] = round(
            figures[name]["per_token"]["p50_ms"] - direct["per_token"]["p50_ms"], 3)
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
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port),
                                 "--ttft", str(args.ttft_ms / 1000), "--tps", str(args.tps), "--tokens",
                                 str(args.tokens)], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{base}/models", process=upstream)
        relay = RelayInstance({MODEL: base}, server=args.server)
        try:
            figures = asyncio.run(measure(relay, base, args.requests, args.pause_ms / 1000))
        finally:
            relay.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)
    for name, figure in figures.items():
        line = f"{name:16} ttft p50 {figure['ttft']['p50_ms']:7.2f} ms  p99 {figure['ttft']['p99_ms']:7.2f} ms  " \
               f"per token p50 {figure['per_token']['p50_ms']:6.3f} ms"
        if "ttft_overhead_p50_ms" in figure:
            line += f"  | added ttft p50 {figure['ttft_overhead_p50_ms']:+.2f} ms"
        print(line)
    print_result({"requests": args.requests, "tokens": args.tokens, "upstream_ttft_ms": args.ttft_ms,
                  "pause_ms": args.pause_ms,
                  "server": args.server, **figures})


if __name__ == "__main__":
    main()

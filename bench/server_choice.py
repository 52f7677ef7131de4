"""Which ASGI server runs Relay in production: daphne, uvicorn (uvloop + httptools), gunicorn + uvicorn workers.

Run: python bench/server_choice.py [--seconds 8] [--concurrency 32] [--rounds 2]

One Relay database (DATABASE_URL/REDIS_URL's servers if set, else SQLite and in-process) and the
fake upstream; each server in turn serves the same instance on its own port and meets the same
load: /v1/chat/completions non-streaming (HTTP), streaming (SSE), and WebSocket queries on
/ws/chat/. Rounds alternate the servers, so the machine's drift hits them alike; each figure is
the best round. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import websockets
from _load import figures, run_load  # noqa: I001  (bench-local helpers)
from _relay import RelayInstance, percentile, print_result

from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig

MODEL = "bench-model"
SERVERS = {  # name: (server, workers)
    "uvicorn": ("relay.serve", 1),
    "daphne": ("daphne", 1),
    "gunicorn_uvicorn_w1": ("gunicorn", 1),
    "gunicorn_uvicorn_w2": ("gunicorn", 2),
}


async def websocket_load(url: str, key: str, concurrency: int, seconds: float) -> dict:
    query = json.dumps({"type": "query", "query": "benchmark", "agent_type": "general", "model": MODEL})
    latencies, errors = [], 0
    stop_at = time.perf_counter() + seconds

    async def user():
        nonlocal errors
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": key}))
            await ws.recv()
            while time.perf_counter() < stop_at:
                begin = time.perf_counter()
                await ws.send(query)
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "done":
                        break
                if event.get("status") == "complete":
                    latencies.append(time.perf_counter() - begin)
                else:
                    errors += 1

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return {"requests": len(latencies), "errors": errors, "rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p99_ms": round(percentile(latencies, 99) * 1000, 2)}


async def measure(url: str, key: str, seconds: float, concurrency: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}], "temperature": 0.7}
    http = figures(await run_load(url, "/v1/chat/completions", body, headers=headers, concurrency=concurrency,
                                  seconds=seconds))
    sse = figures(await run_load(url, "/v1/chat/completions", {**body, "stream": True}, headers=headers,
                                 concurrency=concurrency, seconds=seconds, stream=True))
    ws = await websocket_load(url.replace("http://", "ws://") + "/ws/chat/", key, concurrency, seconds)
    return {"http": http, "sse": sse, "websocket": ws}


def best(rounds: list[dict]) -> dict:
    return {kind: max((r[kind] for r in rounds), key=lambda f: f["rps"]) for kind in ("http", "sse", "websocket")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    names = args.servers.split(",")
    config = FakeUpstreamConfig(tokens=20)
    results = {name: [] for name in names}
    with FakeUpstream(config) as upstream:
        relay = RelayInstance({MODEL: upstream.base_url}, extra_env={"RELAY_CACHE_PREFIX": f"bench{time.time_ns()}"})
        relay.process.terminate()
        relay.process.wait(20)
        try:
            for _round in range(args.rounds):
                for name in names:
                    server, workers = SERVERS[name]
                    process, url = relay.spawn(server, workers)
                    try:
                        results[name].append(asyncio.run(measure(url, relay.key, args.seconds, args.concurrency)))
                    finally:
                        process.terminate()
                        process.wait(30)
        finally:
            relay.process = type("Done", (), {"terminate": lambda self: None, "wait": lambda self, timeout: 0})()
            relay.stop()
    summary = {name: best(rounds) for name, rounds in results.items()}
    for name, kinds in summary.items():
        print(f"{name:22}" + "  ".join(f"{kind} {f['rps']:7.1f} req/s p50 {f['p50_ms']:7.1f} p99 {f['p99_ms']:7.1f} ms"
                                      f" err {f['errors']}" for kind, f in kinds.items()))
    print_result({"concurrency": args.concurrency, "seconds": args.seconds, "servers": summary})


if __name__ == "__main__":
    main()

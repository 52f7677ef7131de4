"""Where an idle request's time goes: the spans of the hot path, each request's own, on one timeline.

Run: python bench/idle_spans.py [--requests 200] [--spans name,name,...]

Starts what `bench/load.py` measures idle (the static upstream, one `relay.serve` on its own
database, a hard budget on the key), with the functions of the model call's path wrapped by a span
tracer (`bench/_spans/sitecustomize.py`: the time each begins and ends, on which thread). Then one
plain and one streamed request at a time, as load.py's idle phase sends them (the first ten of each
warm up), and Relay stops. For each kind, every span's begin (B), end (E) and, for a stream, first
item (Y), as the median over the requests of its offset from the moment the ASGI handler got the
request: the critical path, and what runs beside it (a `#2` is the span's second occurrence in that
request; a span shown for fewer than all requests ran in only some of them, such as the previous
request's closing still committing). The tracer adds a few microseconds per traced call, so the
offsets are a little later than untraced; the gaps between them are what to read. The last line is
one JSON object.

Times are medians of one run on whatever the machine is doing: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import tempfile
from pathlib import Path

from _relay import ROOT, print_result
from load import MODELS, Bench, idle_latency  # noqa: I001  (bench-local helpers)

SPANS = [  # module:attribute, in the order a plain request meets them
    "relay.eventloop.handler:RelayASGIHandler.__call__",
    "agents.api.openai_api:chat_completions",
    "relay.eventloop.db:_fresh",  # a DB thread's part of a trip to the pool
    "relay.api.async_views:_admit",
    "accounts.services:authenticate_key",
    "accounts.services:_lookup",
    "agents.runner:read_ahead",
    "agents.runner:prepare",
    "billing.ratelimit:admit",
    "billing.services:open_charge",
    "agents.actions.runs:open_run",
    "relay.eventloop.pg:execute_sets",
    "relay.eventloop.group_commit:GroupCommit._write",
    "agents.router:acquire",
    "relay.redis_scripts:_trip",
    "agents.providers.openai_compat:OpenAICompatibleProvider.stream",
    "agents.events:token",
    "agents.router:release",
    "agents.runner:_finish",
    "agents.actions.runs:settle_run",
    "agents.actions.runs:commit_run",
]
REQUEST = "RelayASGIHandler.__call__"
VIEW = "chat_completions"


def requests_of(notes: list) -> list[tuple[int, list]]:
    """[(start, notes)] per HTTP request the view served, in order."""
    out, current = [], None
    for note in sorted(notes):
        if note[2] == REQUEST and note[3] == "B":
            current = []
            out.append((note[0], current))
        if current is not None:
            current.append(note)
    return [request for request in out if any(note[2] == VIEW for note in request[1])]


def timeline(requests: list[tuple[int, list]]) -> list[dict]:
    """Each span event's median offset (ms) from its request's start, in order, and for an event on
    the request's own thread (the event loop) the CPU that thread had used since (`cpu_ms`): where
    the wall time and the loop's CPU grow alike the request waits for the loop's own work, where only
    the wall time grows it waits for another process (a trip) or thread."""
    offsets, cpu = collections.defaultdict(list), collections.defaultdict(list)
    for start, notes in requests:
        seen = collections.Counter()
        loop, cpu_start = notes[0][1], notes[0][4]
        for at, thread, name, kind, thread_cpu in notes:
            seen[(name, kind)] += 1
            offsets[(name, kind, seen[(name, kind)])].append((at - start) / 1e6)
            if thread == loop:
                cpu[(name, kind, seen[(name, kind)])].append((thread_cpu - cpu_start) / 1e6)
    rows = [{"ms": round(statistics.median(values), 3), "span": name, "event": f"{kind}#{count}",
             "share": round(len(values) / len(requests), 2),
             "cpu_ms": round(statistics.median(cpu[(name, kind, count)]), 3) if cpu[(name, kind, count)] else None}
            for (name, kind, count), values in offsets.items() if len(values) >= len(requests) / 2]
    return sorted(rows, key=lambda row: row["ms"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--spans", default=",".join(SPANS))
    args = parser.parse_args()
    spans_dir = tempfile.mkdtemp(prefix="relay-spans-")
    os.environ.update({"RELAY_SPANS": args.spans, "RELAY_SPANS_DIR": spans_dir,
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench" / "_spans"),
                                                                    os.environ.get("PYTHONPATH")]))})
    bench = Bench(argparse.Namespace(upstream="static", tokens=20, litellm=False, floors=False, idle_requests=0))
    relay = {"url": bench.relay.url, "path": bench.relay_paths, "headers": bench.auth}
    pid, measured = bench.relay.process.pid, {}
    try:
        for kind in MODELS:
            direct = asyncio.run(idle_latency(bench.direct, kind, args.requests))["p50_ms"]
            through = asyncio.run(idle_latency(relay, kind, args.requests))["p50_ms"]
            measured[kind] = {"direct_p50_ms": direct, "relay_p50_ms": through, "added_ms": round(through - direct, 2)}
    finally:
        bench.relay.stop()  # the tracer writes its notes as the process exits
        bench.stop_upstream()
        bench.paced.terminate()
    requests = requests_of(json.loads((Path(spans_dir) / f"spans-{pid}.json").read_text()))
    warm = 10
    kinds = {"plain": requests[warm:args.requests + warm], "stream": requests[args.requests + 2 * warm:]}
    out = {}
    for kind, served in kinds.items():
        rows = timeline(served)
        out[kind] = {**measured[kind], "requests": len(served), "timeline": rows}
        print(f"\n{kind}: added {measured[kind]['added_ms']} ms p50, traced ({len(served)} traced requests)")
        print_timeline(rows)
    print_result(out)


def print_timeline(rows: list[dict]) -> None:
    print("   wall ms   loop CPU ms")
    for row in rows:
        shown = "" if row["share"] == 1 else f"  (in {row['share']:.0%})"
        cpu = f"{row['cpu_ms']:8.3f}" if row["cpu_ms"] is not None else "  (thread)"
        print(f"  {row['ms']:8.3f}  {cpu}  {row['event']:5}  {row['span']}{shown}")


if __name__ == "__main__":
    main()

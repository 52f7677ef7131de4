"""Load: Relay's throughput and latency overhead on /v1/chat/completions, against LiteLLM Proxy.

Run: python bench/load.py [--seconds 10] [--concurrency 32] [--instances 2] [--streams 1000]
     (DATABASE_URL and REDIS_URL point at PostgreSQL and Redis: the production configuration)

One fake OpenAI-compatible upstream process (tests/support/fake_upstream.py) serves everyone.
Measured with one load tool (bench/_load.py), at one concurrency, streaming and not:
  direct   the upstream itself (the floor every proxy adds to);
  relay    one Relay instance (python -m relay.serve) with API-key auth, a hard budget on the key
           (ledger reserve + settle in Redis), usage records, the audit trail and metrics all on;
  cluster  N Relay instances behind nginx (platform/scripts/cluster.py, as `make cluster`);
  litellm  LiteLLM Proxy (the version pinned in bench/_litellm.py, installed by this script into
           var/litellm/venv from the package index) routing the same model to the same upstream.
Overhead = a figure's latency minus the direct one. Rounds alternate the targets; each figure is
the best round. Then 1,000 streams held open at once on one instance, with its memory growth.
Last, `manage.py reconcile` checks that the usage records, the ledger and the audit trail agree
after all that load (printed, and in the JSON as `reconcile`). The last line is one JSON object
with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import _litellm  # noqa: I001  (bench-local helpers)
from _litellm import wait_http
from _load import Connection, figures, run_load
from _relay import ROOT, RelayInstance, free_port, print_result

from tests.support.ports import free_port_run

MODEL = "fake-large"
LITELLM_KEY = _litellm.KEY
BUDGET = """
from decimal import Decimal
from accounts.models import APIKey
from billing.models import Budget
key = APIKey.objects.get()
Budget.objects.create(organization=key.owner.organization, scope="api_key", api_key=key, period="monthly",
                      limit_usd=Decimal("100000"), hard=True, alert_thresholds=[50, 80])
"""


def start_upstream(tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port), "--tokens",
                                str(tokens)], cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    return process, f"http://127.0.0.1:{port}"


def start_litellm(upstream: str) -> tuple[subprocess.Popen, str]:
    process, url, _ = _litellm.start(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream}/v1
      api_key: unused
litellm_settings:
  drop_params: true
general_settings:
  master_key: {LITELLM_KEY}
""")
    return process, url


def start_cluster(relay: RelayInstance, instances: int) -> tuple[list[str], str]:
    port = free_port()
    script = [sys.executable, str(ROOT / "platform" / "scripts" / "cluster.py"), "--state-dir",
              str(Path(relay.tmp) / "cluster")]
    subprocess.run([*script, "start", "-n", str(instances), "--no-celery", "--port", str(port),
                    "--base-port", str(free_port_run(instances))], env=relay.env, check=True, cwd=ROOT)
    return script, f"http://127.0.0.1:{port}"


async def measure_round(targets: dict, seconds: float, concurrency: int) -> dict:
    out = {}
    for name, (url, path, headers) in targets.items():
        for stream in (False, True):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}], "temperature": 0.7,
                    "stream": stream}
            result = await run_load(url, path, body, headers=headers, concurrency=concurrency, seconds=seconds,
                                    stream=stream)
            out[f"{name}_{'stream' if stream else 'plain'}"] = figures(result)
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def open_streams(url: str, key: str, count: int, pid: int) -> dict:
    """`count` streams open at once (slow upstream tokens); the instance's RSS before and at the peak."""
    before = rss_kb(pid)
    started = asyncio.Event()
    open_now = 0
    peak = {"rss_kb": before, "open": 0}
    body = json.dumps({"model": MODEL, "stream": True, "temperature": 0.7, "max_tokens": 40,
                       "messages": [{"role": "user", "content": "hold [[fake: tps=1 tokens=40]]"}]}).encode()

    async def one():
        nonlocal open_now
        conn = Connection(url)
        try:
            await conn._open()
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            conn.writer.write(head + body)
            first = await conn.reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in first.split(b"\r\n")[0]:
                return False
            await conn.reader.readuntil(b'"content"')  # the first token arrived: the stream is live
            open_now += 1
            if open_now == count:
                started.set()
            await started.wait()
            return True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        finally:
            conn.close()

    async def sample():
        while not started.is_set():
            peak["rss_kb"], peak["open"] = max(peak["rss_kb"], rss_kb(pid)), max(peak["open"], open_now)
            await asyncio.sleep(0.2)
        peak["rss_kb"], peak["open"] = max(peak["rss_kb"], rss_kb(pid)), open_now

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    sampler = asyncio.create_task(sample())
    try:
        await asyncio.wait_for(started.wait(), timeout=120)
    except TimeoutError:
        started.set()
    ok = sum(await asyncio.gather(*tasks))
    await sampler
    return {"streams": count, "open_at_peak": peak["open"], "completed_open": ok, "rss_before_mb": round(before / 1024, 1),
            "rss_peak_mb": round(peak["rss_kb"] / 1024, 1), "growth_mb": round((peak["rss_kb"] - before) / 1024, 1)}


def ratios(best: dict) -> dict:
    out = {}
    for kind in ("plain", "stream"):
        direct, relay, litellm = best[f"direct_{kind}"], best[f"relay_{kind}"], best.get(f"litellm_{kind}")
        for name in ("relay", "cluster", "litellm"):
            figure = best.get(f"{name}_{kind}")
            if figure and figure["p50_ms"] is not None:
                figure["overhead_p50_ms"] = round(figure["p50_ms"] - direct["p50_ms"], 2)
                figure["overhead_p99_ms"] = round(figure["p99_ms"] - direct["p99_ms"], 2)
        if litellm and litellm["rps"]:
            out[f"{kind}_throughput_relay_over_litellm"] = round(relay["rps"] / litellm["rps"], 2)
            out[f"{kind}_p99_overhead_relay_over_litellm"] = round(
                relay["overhead_p99_ms"] / litellm["overhead_p99_ms"], 2) if litellm["overhead_p99_ms"] > 0 else None
            out[f"{kind}_p50_overhead_relay_over_litellm"] = round(
                relay["overhead_p50_ms"] / litellm["overhead_p50_ms"], 2) if litellm["overhead_p50_ms"] > 0 else None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    args = parser.parse_args()
    upstream_process, upstream = start_upstream(args.tokens)
    relay = RelayInstance({MODEL: f"{upstream}/v1"}, server="relay.serve",
                          extra_env={"RELAY_CACHE_PREFIX": f"bench{time.time_ns()}"})
    relay.run_manage("shell", "-c", BUDGET)
    cluster_script, litellm, books = None, None, None
    try:
        cluster_script, cluster_url = start_cluster(relay, args.instances)
        if args.litellm:
            litellm, litellm_url = start_litellm(upstream)
        auth = {"Authorization": f"Bearer {relay.key}"}
        targets = {"direct": (upstream, "/v1/chat/completions", {}), "relay": (relay.url, "/v1/chat/completions", auth),
                   "cluster": (cluster_url, "/v1/chat/completions", auth)}
        if litellm:
            targets["litellm"] = (litellm_url, "/v1/chat/completions", {"Authorization": f"Bearer {LITELLM_KEY}"})
        rounds = [asyncio.run(measure_round(targets, args.seconds, args.concurrency)) for _ in range(args.rounds)]
        best = {name: max((r[name] for r in rounds), key=lambda f: f["rps"]) for name in rounds[0]}
        summary = ratios(best)
        streams = asyncio.run(open_streams(relay.url, relay.key, args.streams, relay.process.pid)) if args.streams else {}
    finally:
        if cluster_script:
            subprocess.run([*cluster_script, "stop"], env=relay.env, cwd=ROOT)
        if litellm:
            litellm.terminate()
            litellm.wait(30)
        try:  # before stop() drops the database: the load left the books as they should be
            books = relay.reconcile()
        finally:
            relay.stop()
        upstream_process.terminate()
    for name, figure in best.items():
        extra = f"  overhead p50 {figure['overhead_p50_ms']:+7.2f} p99 {figure['overhead_p99_ms']:+7.2f} ms" \
            if "overhead_p50_ms" in figure else ""
        print(f"{name:16} {figure['rps']:8.1f} req/s  p50 {figure['p50_ms']:8.2f} ms  p99 {figure['p99_ms']:8.2f} ms  "
              f"errors {figure['errors']}{extra}")
    for name, value in summary.items():
        print(f"{name:42} {value}")
    if streams:
        print(f"open streams: {streams['open_at_peak']}/{streams['streams']} at once, RSS {streams['rss_before_mb']} -> "
              f"{streams['rss_peak_mb']} MB (+{streams['growth_mb']} MB)")
    print_reconcile(books)
    print_result({"concurrency": args.concurrency, "seconds": args.seconds, "instances": args.instances,
                  "upstream_tokens": args.tokens, "figures": best, "relay_vs_litellm": summary,
                  "open_streams": streams, "reconcile": books})


def print_reconcile(books: dict) -> None:
    """`manage.py reconcile` after the run: usage records, ledger and audit trail must agree."""
    found = books.get("discrepancies", [])
    if books.get("ok"):
        checked = books["checked"]
        print(f"reconcile: OK ({checked['usage_records']} usage records audited, {checked['ledger_counters']} "
              f"ledger counter(s) match, ledger: {books['ledger']})")
        return
    print(f"reconcile: NOT CLEAN, {len(found)} discrepancy(ies) {books.get('error', '')}".rstrip())
    for item in found[:20]:
        print(f"  {item['message']}")


if __name__ == "__main__":
    main()

"""Load: Relay's throughput, latency and CPU per request on /v1/chat/completions, against LiteLLM Proxy.

Run: python bench/load.py [--seconds 10] [--concurrency 32 64] [--processes 1 2] [--instances 0]
                          [--upstream static|fake] [--streams 1000] [--idle-requests 200]
     (DATABASE_URL and REDIS_URL point at PostgreSQL and Redis: the production configuration)

The upstream is, by default, static: a private nginx answering fixed OpenAI bodies from memory
(bench/_static_upstream.py: one completion, or a 50-chunk stream), so that the gateways and not
the upstream are the bottleneck; `--upstream fake` uses the Python fake upstream instead.
Targets, each measured with one load tool (bench/_load.py), plain and streaming:
  direct   the upstream itself (the floor every gateway adds to);
  relay    Relay with API-key auth, a hard budget on the key (ledger reserve + settle in Redis),
           usage records, the audit trail and metrics all on: one process (python -m relay.serve),
           or N such processes on the same database and Redis, the connections spread over them;
  litellm  LiteLLM Proxy (the version pinned in bench/_litellm.py, installed by this script into
           var/litellm/venv-<python> from the package index) with the same process count, no database;
  cluster  with --instances N: N Relay instances behind nginx (platform/scripts/cluster.py);
  floor_asgi, floor_django  the floors under any gateway's cost, N processes each (bench/_floor_app.py):
           the same proxying as a bare ASGI app, and as a Django view behind Relay's own middleware
           with no auth, ledger, database, Redis or audit; Relay minus floor_django is the price
           of its guarantees (--no-floors leaves them out);
  floor_guarded  in the idle phase, on PostgreSQL: the django floor plus the fewest round trips
           Relay's guarantees need (the key and its reservation in one Redis script, the run's row
           committed before the model is asked, the settle and one commit of the usage row and a
           chained audit row after the answer): the least those guarantees add to one request.
For each process count and concurrency, rounds alternate the targets; each figure is the best
round. Beside requests/s and latency, each figure has the CPU milliseconds per request of every
component (Relay's processes, LiteLLM's, PostgreSQL, Redis, each nginx, the load generator),
read from /proc while the load ran (bench/_cpu.py). Then the idle added latency: single requests
one at a time, plain (whole answer) and streaming (time to the first token), minus the direct
figure, with the CPU each such request costs every component (the work after the answer
included). Then 1,000 streams held open at once on one instance, with its memory growth. Last,
`manage.py reconcile` checks that the usage records, the ledger and the audit trail agree after
all that load, and each of issue 22's goals is printed met or MISSED, decided on the exact figures
(bench/_goals.py). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _goals as goals  # noqa: I001  (bench-local helpers)
import _litellm
import httpx
from _cpu import Components, per_request, postgres_of
from _litellm import wait_http
from _load import Connection, figures, open_stream, run_load
from _relay import ROOT, RelayInstance, free_port, print_interpreter, print_result
from _static_upstream import StaticUpstream

from tests.support.ports import free_port_run

MODELS = {"plain": "bench-plain", "stream": "bench-stream"}
# The open-streams test: a model on the Python fake upstream, which paces its tokens (one a second
# here) so that the streams stay open together; the static upstream answers every stream at once.
HELD_MODEL = "bench-held"
LITELLM_KEY = _litellm.KEY
BUDGET = """
from decimal import Decimal
from accounts.models import APIKey
from billing.models import Budget
key = APIKey.objects.get()
Budget.objects.create(organization=key.owner.organization, scope="api_key", api_key=key, period="monthly",
                      limit_usd=Decimal("100000"), hard=True, alert_thresholds=[50, 80])
"""


def start_upstream(kind: str, tokens: int) -> tuple[object, dict[str, str], callable]:
    """(the upstream, {plain|stream: its base URL}, how to stop it)."""
    if kind == "static":
        static = StaticUpstream(free_port(), MODELS["plain"], MODELS["stream"])
        wait_http(f"{static.url}/plain/v1/models")
        return static, {k: static.base(k) for k in MODELS}, static.stop
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port), "--tokens",
                                str(tokens)], cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    base = f"http://127.0.0.1:{port}/v1"
    return process, dict.fromkeys(MODELS, base), process.terminate


def start_litellm(bases: dict[str, str], workers: int) -> tuple[subprocess.Popen, str]:
    models = "".join(f"""  - model_name: {MODELS[kind]}
    litellm_params:
      model: openai/{MODELS[kind]}
      api_base: {bases[kind]}
      api_key: unused
""" for kind in MODELS)
    process, url, _ = _litellm.start(f"""model_list:
{models}litellm_settings:
  drop_params: true
general_settings:
  master_key: {LITELLM_KEY}
""", workers=workers)
    return process, url


def start_floor(kind: str, bases: dict[str, str], env: dict, headers: dict | None = None,
                models: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """One floor process (bench/_floor_app.py), once it answers. `bases` {kind: upstream base} of
    `models` {kind: model name} (this script's MODELS unless given; "plain" is asked to see it answer)."""
    models = models or MODELS
    port = free_port()
    routes = [f"{models[k]}={bases[k]}" for k in models]
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_floor_app.py"), kind, str(port), *routes],
                               cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    probe = {**body("plain"), "model": models["plain"]}
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.post(url + "/v1/chat/completions", json=probe, headers=headers,
                          timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        # Whatever it answered: a floor that answers every probe with an error never starts either.
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"the {kind} floor did not start: no 200 from {url}")
        time.sleep(0.1)


def start_cluster(relay: RelayInstance, instances: int) -> tuple[list[str], str]:
    port = free_port()
    script = [sys.executable, str(ROOT / "platform" / "scripts" / "cluster.py"), "--state-dir",
              str(Path(relay.tmp) / "cluster")]
    subprocess.run([*script, "start", "-n", str(instances), "--no-celery", "--port", str(port),
                    "--base-port", str(free_port_run(instances))], env=relay.env, check=True, cwd=ROOT)
    return script, f"http://127.0.0.1:{port}"


def body(kind: str) -> dict:
    return {"model": MODELS[kind], "messages": [{"role": "user", "content": "benchmark"}], "temperature": 0.7,
            "stream": kind == "stream"}


async def measure_round(targets: dict, seconds: float, concurrency: int, components: Components) -> dict:
    out = {}
    for name, target in targets.items():
        for kind in MODELS:
            result = await run_load(target["url"], target["path"][kind], body(kind), headers=target["headers"],
                                    concurrency=concurrency, seconds=seconds, stream=kind == "stream",
                                    snapshot=components.snapshot)
            figure = figures(result)
            before, after = result.snapshots
            figure["cpu_ms_per_request"] = per_request(before, after, figure["requests"] + figure["errors"])
            out[f"{name}_{kind}"] = figure
    return out


async def timed(client: httpx.AsyncClient, url: str, kind: str, headers: dict) -> float:
    """Seconds to the whole answer (plain) or to the first token (stream) of one request to `url`,
    reading a stream to its end (the connection is reused)."""
    started, elapsed = time.perf_counter(), None
    async with client.stream("POST", url, json=body(kind), headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        if kind == "plain":
            await response.aread()
            return time.perf_counter() - started
        async for line in response.aiter_lines():
            if elapsed is None and '"content":"token' in line.replace(" ", ""):
                elapsed = time.perf_counter() - started
    return elapsed


async def idle_latency(target: dict, kind: str, requests: int, components: Components | None = None) -> dict:
    """Single requests one at a time: `p50_ms`, of the whole answer (plain) or of the first token
    (stream), and, with `components`, `cpu_ms_per_request` of each over the measured requests:
    on an idle machine, what one request costs every process it passes through, serially."""
    samples, before = [], None
    url = target["url"] if isinstance(target["url"], str) else target["url"][0]  # one process suffices
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(requests + 10):  # the first ten warm the connection and the caches
            if index == 10 and components is not None:
                before = components.snapshot()
            samples.append(await timed(client, url + target["path"][kind], kind, target["headers"]))
    out = {"p50_ms": round(statistics.median(samples[10:]) * 1000, 2)}
    if before is not None:
        out["cpu_ms_per_request"] = {name: ms for name, ms in per_request(before, components.snapshot(), requests).items()
                                     if ms >= 0.005}
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
    body = json.dumps({"model": HELD_MODEL, "stream": True, "temperature": 0.7, "max_tokens": 40,
                       "messages": [{"role": "user", "content": "hold [[fake: tps=1 tokens=40]]"}]}).encode()

    async def one():
        nonlocal open_now
        conn = Connection(url)
        try:
            if not await open_stream(conn, "/v1/chat/completions", key, body):
                return False
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


def ratios(best: dict, gateways: list[str]) -> dict:
    """Overheads over the direct figure; Relay over LiteLLM (throughput, p99 and p50 overhead)."""
    out = {}
    for kind in MODELS:
        direct = best[f"direct_{kind}"]
        for name in gateways:
            figure = best.get(f"{name}_{kind}")
            if figure and figure["p50_ms"] is not None:
                figure["overhead_p50_ms"] = round(figure["p50_ms"] - direct["p50_ms"], 2)
                figure["overhead_p99_ms"] = round(figure["p99_ms"] - direct["p99_ms"], 2)
        relay, litellm = best.get(f"relay_{kind}"), best.get(f"litellm_{kind}")
        if relay and litellm and litellm["rps"]:
            out[f"{kind}_throughput_relay_over_litellm"] = round(relay["rps"] / litellm["rps"], 2)
            out[f"{kind}_p99_relay_over_litellm"] = round(relay["p99_ms"] / litellm["p99_ms"], 2)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.upstream, self.bases, self.stop_upstream = start_upstream(args.upstream, args.tokens)
        self.paced = self.relay = None
        try:
            port = free_port()
            self.paced = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port)],
                                          cwd=ROOT, stdout=subprocess.DEVNULL)
            wait_http(f"http://127.0.0.1:{port}/v1/models")
            upstreams = {**{MODELS[k]: self.bases[k] for k in MODELS}, HELD_MODEL: f"http://127.0.0.1:{port}/v1"}
            self.relay = RelayInstance(upstreams, server="relay.serve",
                                       extra_env={"RELAY_CACHE_PREFIX": f"bench{time.time_ns()}"})
            self.relay.run_manage("shell", "-c", BUDGET)
        except BaseException:
            # A failed start leaves nothing running: a stray upstream would share the machine with every
            # later measurement (it happened: bench/README.md, cpu_profile.py, 2026-12-07).
            if self.relay is not None:
                self.relay.stop()
            if self.paced is not None:
                self.paced.terminate()
            self.stop_upstream()
            raise
        direct_paths = {k: self.bases[k].split("127.0.0.1", 1)[1].split("/", 1)[1] for k in MODELS}
        self.direct = {"url": self.bases["plain"].rsplit("/", 2)[0] if self.args.upstream == "static"
                       else self.bases["plain"].rsplit("/", 1)[0],
                       "path": {k: "/" + direct_paths[k] + "/chat/completions" for k in MODELS}, "headers": {}}
        self.relay_paths = dict.fromkeys(MODELS, "/v1/chat/completions")
        self.auth = {"Authorization": f"Bearer {self.relay.key}"}
        self.upstream_pid = self.upstream.process.pid if args.upstream == "static" else self.upstream.pid

    def components(self, relay_pids: list[int], litellm_pids: list[int], cluster_pids: list[int],
                   floor_pids: dict[str, list[int]]) -> Components:
        return Components({"relay": relay_pids, "litellm": litellm_pids, "upstream nginx": [self.upstream_pid],
                           "cluster nginx": cluster_pids, **floor_pids},
                          {"postgresql": ("postgres", postgres_of(self.relay.dbname or "")), "redis": "redis-server"})

    def phase(self, processes: int) -> dict:
        """Every concurrency at one process count: Relay and LiteLLM each with `processes` processes."""
        extras, relay_url, relay_pids = [], self.relay.url, [self.relay.process.pid]
        litellm = cluster_script = None
        try:
            if processes > 1:
                # As production runs Relay: one `relay.serve` process per instance (its loop outlives
                # requests, so closings commit after the answer); the load spreads over them evenly,
                # as SO_REUSEPORT or a service's endpoints would, without a proxy's hop.
                extras = [self.relay.spawn("relay.serve") for _ in range(processes - 1)]
                relay_url = [self.relay.url, *(url for _, url in extras)]
                relay_pids += [process.pid for process, _ in extras]
            targets = {"direct": self.direct,
                       "relay": {"url": relay_url, "path": self.relay_paths, "headers": self.auth}}
            litellm_pids, cluster_pids, floor_pids = [], [], {}
            if self.args.floors:
                for kind in ("asgi", "django"):
                    started = [start_floor(kind, self.bases, self.relay.env) for _ in range(processes)]
                    extras += [(process, url) for process, url in started]
                    floor_pids[f"floor_{kind}"] = [process.pid for process, _ in started]
                    targets[f"floor_{kind}"] = {"url": [url for _, url in started], "path": self.relay_paths,
                                                "headers": {}}
            if self.args.litellm:
                litellm, litellm_url = start_litellm(self.bases, processes)
                litellm_pids = [litellm.pid]
                targets["litellm"] = {"url": litellm_url, "path": self.relay_paths,
                                      "headers": {"Authorization": f"Bearer {LITELLM_KEY}"}}
            if self.args.instances and self.args.instances == processes:
                cluster_script, cluster_url = start_cluster(self.relay, processes)
                targets["cluster"] = {"url": cluster_url, "path": self.relay_paths, "headers": self.auth}
                cluster_pids = cluster_roots(self.relay)
            idle_targets = dict(targets)  # the guarded floor is measured idle only
            if self.args.floors and processes == 1 and self.args.idle_requests and self.relay.dbname:
                started = start_floor("guarded", self.bases, {**self.relay.env, "RELAY_FLOOR_KEY": self.relay.key},
                                      self.auth)
                extras.append(started)
                floor_pids["floor_guarded"] = [started[0].pid]
                idle_targets["floor_guarded"] = {"url": started[1], "path": self.relay_paths, "headers": self.auth}
            # The cluster's instances count as Relay, its nginx as the cluster's.
            components = self.components(relay_pids + cluster_pids[:-1], litellm_pids, cluster_pids[-1:], floor_pids)
            out = {}
            for concurrency in self.args.concurrency:
                rounds = [asyncio.run(measure_round(targets, self.args.seconds, concurrency, components))
                          for _ in range(self.args.rounds)]
                best = {name: max((r[name] for r in rounds), key=lambda f: f["rps"]) for name in rounds[0]}
                out[f"c{concurrency}"] = {"figures": best, "relay_vs_litellm": ratios(best, list(targets)[1:])}
            if processes == 1 and self.args.idle_requests:
                out["idle"] = self.idle(idle_targets, components)
            return out
        finally:
            if cluster_script:
                subprocess.run([*cluster_script, "stop"], env=self.relay.env, cwd=ROOT)
            for process in (litellm, *(process for process, _ in extras)):  # Relay's and the floors'
                if process is not None:
                    process.terminate()
                    process.wait(30)

    def idle(self, targets: dict, components: Components) -> dict:
        """Added latency of one request at a time on an otherwise idle machine, per gateway, and
        the CPU each such request costs every component (`cpu_ms_per_request`): the part of it
        spent before the answer, in sequence, is a floor under that latency."""
        requests = self.args.idle_requests
        direct = {kind: asyncio.run(idle_latency(self.direct, kind, requests))["p50_ms"] for kind in MODELS}
        out = {"direct_p50_ms": direct, "cpu_ms_per_request": {}}
        for name in ("relay", "litellm", "floor_django", "floor_guarded"):
            if name in targets:
                out[name] = {}
                for kind in MODELS:
                    measured = asyncio.run(idle_latency(targets[name], kind, requests, components))
                    out[name][kind] = round(measured["p50_ms"] - direct[kind], 2)
                    out["cpu_ms_per_request"][f"{name}_{kind}"] = measured["cpu_ms_per_request"]
        for name in ("relay", "floor_guarded"):
            if name in out and "litellm" in out:
                out[f"{name}_over_litellm"] = {kind: round(out[name][kind] / out["litellm"][kind], 3)
                                               if out["litellm"][kind] > 0 else None for kind in MODELS}
        return out

    def stop(self) -> dict:
        try:  # before stop() drops the database: the load left the books as they should be
            return self.relay.reconcile()
        finally:
            try:
                self.relay.stop()
            finally:
                self.stop_upstream()
                self.paced.terminate()


def cluster_roots(relay: RelayInstance) -> list[int]:
    """The cluster's process roots (its instances and its nginx), from its state file."""
    state = Path(relay.tmp) / "cluster" / "state.json"
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return []
    entries = [*data.get("instances", []), data.get("nginx") or {}]
    return [int(entry["pid"]) for entry in entries if "pid" in entry]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--instances", type=int, default=0, help="also a cluster of N instances behind nginx")
    parser.add_argument("--upstream", choices=["static", "fake"], default="static")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per answer of the fake upstream")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--idle-requests", type=int, default=200)
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    parser.add_argument("--no-floors", dest="floors", action="store_false")
    args = parser.parse_args()
    print_interpreter()
    bench = Bench(args)
    phases, streams, books = {}, {}, {}
    try:
        for processes in args.processes:
            phases[f"p{processes}"] = bench.phase(processes)
            print_phase(processes, phases[f"p{processes}"])
        if args.streams:
            streams = asyncio.run(open_streams(bench.relay.url, bench.relay.key, args.streams,
                                               bench.relay.process.pid))
    finally:
        books = bench.stop()
    if streams:
        print(f"open streams: {streams['open_at_peak']}/{streams['streams']} at once, RSS {streams['rss_before_mb']} -> "
              f"{streams['rss_peak_mb']} MB (+{streams['growth_mb']} MB)")
    print_reconcile(books)
    result = {"seconds": args.seconds, "upstream": args.upstream, "phases": phases, "open_streams": streams,
              "reconcile": books}
    result["goals"] = goals.check(result)
    print(goals.report(result["goals"]))
    print_result(result)


def print_phase(processes: int, phase: dict) -> None:
    for level, result in phase.items():
        if level == "idle":
            continue
        print(f"--- {processes} process(es), {level[1:]} connections")
        for name, figure in result["figures"].items():
            extra = (f"  overhead p50 {figure['overhead_p50_ms']:+7.2f} p99 {figure['overhead_p99_ms']:+7.2f} ms"
                     if "overhead_p50_ms" in figure else "")
            print(f"{name:16} {figure['rps']:8.1f} req/s  p50 {figure['p50_ms']:8.2f} ms  p99 "
                  f"{figure['p99_ms']:8.2f} ms  errors {figure['errors']}{extra}")
            cpu = figure.get("cpu_ms_per_request", {})
            print(" " * 17 + "CPU ms/request: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v))
        for name, value in result["relay_vs_litellm"].items():
            print(f"{name:42} {value}")
    if "idle" in phase:
        idle = phase["idle"]
        shown = {k: v for k, v in idle.items() if k not in ("direct_p50_ms", "cpu_ms_per_request")}
        print(f"idle added latency (ms, p50): {json.dumps(shown)}")
        for name, cpu in idle.get("cpu_ms_per_request", {}).items():
            print(f"idle {name:20} CPU ms/request: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))


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

"""Capacity: calibrate a CPU model on one Relay instance, predict the 2-instance cluster, then measure it.

Run: python bench/capacity.py [--seconds 8] [--rounds 2] [--cycles 6] [--cycle-seconds 5] [--concurrency 64]
                              [--instances 2] [--streams 1000] [--hold-seconds 10] [--no-celery]
     (DATABASE_URL and REDIS_URL point at PostgreSQL and Redis, as for bench/load.py)

Relay is configured as in bench/load.py (API-key auth, a hard budget on the key, usage records,
audit, metrics) on the static upstream (bench/_static_upstream.py), and runs as `make cluster`
runs it (platform/scripts/cluster.py: relay.serve instances, Celery worker and beat, nginx), from
a private state directory and port, so a developer's own cluster is never touched.

1. Calibration, on a cluster of ONE instance: plain requests straight at the instance at the
   concurrency each instance of the bigger cluster will see (--concurrency / --instances) and
   at --concurrency; streams likewise; plain requests through nginx (nginx's own CPU per
   request); --streams streams held open through nginx at one token a second (CPU per
   stream-second, memory per open stream). Every figure has the CPU ms per request of each
   component, read from /proc (bench/_cpu.py): Relay, PostgreSQL (this database's backends and
   the server's writers), Redis, nginx, Celery, the upstreams, the load generator itself; and
   what every other program on the (shared) machine used meanwhile.
2. Cycles (--cycles), with the one-instance and the --instances cluster both up, so that a cycle
   takes seconds (on a shared machine the other programs' CPU drifts within a minute): the one
   instance again, beside --instances - 1 busy loops standing in for the other instances (a
   request costs more CPU when every core is contended: the `saturated` terms); the model
   (bench/_capacity_model.py) from the calibration alone: per-core requests/s, cores of Relay,
   PostgreSQL and Redis for 1,000 plain requests/s and 1,000 open streams, and the plain
   requests/s of the bigger cluster on this machine, written to
   var/capacity/prediction-<UTC time>-cycle<k>.json and printed BEFORE the cluster is measured;
   then that cluster measured through its nginx with the same load tool and connections;
   measured vs predicted, the error, each term beside what the cluster spent.
3. Both clusters stopped; the mean of the recorded predictions against the mean measured figure;
   `reconcile` checks the books after all the load. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import _capacity_model as model  # noqa: I001  (bench-local helpers)
from _cpu import Components, machine_cpu_seconds, per_request, postgres_of
from _litellm import wait_http
from _load import Connection, figures, open_stream, run_load
from _relay import ROOT, RelayInstance, free_port, print_result
from _static_upstream import CHUNKS, StaticUpstream
from load import BUDGET, print_reconcile

from tests.support.ports import free_port_run

MODELS = {"plain": "bench-plain", "stream": "bench-stream", "held": "bench-held"}
PATH = "/v1/chat/completions"
HELD_TPS = 1.0
CLUSTER = [sys.executable, str(ROOT / "platform" / "scripts" / "cluster.py")]


def body(kind: str) -> dict:
    return {"model": MODELS[kind], "messages": [{"role": "user", "content": "benchmark"}], "temperature": 0.7,
            "stream": kind == "stream"}


class Cluster:
    """platform/scripts/cluster.py with its own state directory and port, on the bench's database."""

    def __init__(self, env: dict, instances: int, celery: bool):
        self.env, self.instances = env, instances
        self.dir = Path(tempfile.mkdtemp(prefix=f"relay-capacity-n{instances}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [*CLUSTER, "--state-dir", str(self.dir), "start", "-n", str(instances), "--port", str(self.port),
                   "--base-port", str(free_port_run(instances))]
        subprocess.run([*command] + ([] if celery else ["--no-celery"]), env=env, check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        state = json.loads((self.dir / "state.json").read_text())
        self.instance_urls = [f"http://127.0.0.1:{i['port']}" for i in state["instances"]]
        self.instance_pids = [i["pid"] for i in state["instances"]]
        self.nginx_pid = state["nginx"]["pid"]
        self.celery_pids = [state[name]["pid"] for name in ("worker", "beat") if name in state]

    def stop(self) -> None:
        subprocess.run([*CLUSTER, "--state-dir", str(self.dir), "stop"], env=self.env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)  # its logs and nginx's access log of the load


class Bench:
    def __init__(self, args):
        self.args = args
        self.static = StaticUpstream(free_port(), MODELS["plain"], MODELS["stream"])
        wait_http(f"{self.static.url}/plain/v1/models")
        port = free_port()  # the held streams' paced upstream (the Python fake: it can wait between tokens)
        self.fake = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        upstreams = {MODELS["plain"]: self.static.base("plain"), MODELS["stream"]: self.static.base("stream"),
                     MODELS["held"]: f"http://127.0.0.1:{port}/v1"}
        self.relay = RelayInstance(upstreams, server="relay.serve",
                                   extra_env={"RELAY_CACHE_PREFIX": f"capacity{time.time_ns()}"})
        self.relay.run_manage("shell", "-c", BUDGET)
        # Its own server is not measured: the instances are started as `make cluster` starts them.
        self.relay.process.terminate()
        self.relay.process.wait(60)
        self.headers = {"Authorization": f"Bearer {self.relay.key}"}
        self.redis_port = str(urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).port or 6379)

    def components(self, cluster: Cluster, stand_ins: list[int] = ()) -> Components:
        return Components({"relay": cluster.instance_pids, "nginx": [cluster.nginx_pid], "celery": cluster.celery_pids,
                           "upstream": [self.static.process.pid, self.fake.pid], "stand-ins": list(stand_ins)},
                          {"postgresql": ("postgres", postgres_of(self.relay.dbname or "")),
                           "redis": ("redis-server", lambda command: f":{self.redis_port}" in command)})

    def load(self, components: Components, url: str, kind: str, concurrency: int, rounds: int | None = None,
             seconds: float | None = None) -> dict:
        """The best of --rounds rounds: requests/s, latency, CPU ms per request by component, and the
        CPU ms per second every other program on the machine used meanwhile (`background_ms_per_s`)."""
        best = None
        for _ in range(rounds or self.args.rounds):
            result = asyncio.run(run_load(url, PATH, body(kind), headers=self.headers, concurrency=concurrency,
                                          seconds=seconds or self.args.seconds, stream=kind == "stream",
                                          snapshot=lambda: (components.snapshot(), machine_cpu_seconds())))
            figure = figures(result)
            (before, machine_before), (after, machine_after) = result.snapshots
            busy, interrupts = (b - a for a, b in zip(machine_before, machine_after, strict=True))
            served = figure["requests"] + figure["errors"]
            after = {**after, "interrupts": {0: interrupts}}  # the kernel's, charged to no process
            figure["cpu_ms_per_request"] = per_request(before, after, served)
            ours = figure["cpu_ms_per_request"]["total"] * served / 1000
            figure["background_ms_per_s"] = round(max(0.0, busy - ours) * 1000 / result.seconds, 1)
            if best is None or figure["rps"] > best["rps"]:
                best = figure
        return best

    def quiet(self, components: Components, seconds: float = 3.0) -> dict:
        """CPU ms per second of our (idle) components and of every other program, with no load."""
        before, (busy_before, _) = components.snapshot(), machine_cpu_seconds()
        time.sleep(seconds)
        after, (busy_after, _) = components.snapshot(), machine_cpu_seconds()
        ours = {name: round(v / seconds, 1) for name, v in per_request(before, after, 1).items()}  # ms per second
        background = (busy_after - busy_before) * 1000 / seconds - ours["total"]
        return {"ours_ms_per_s": ours, "background_ms_per_s": round(max(0.0, background), 1)}

    def calibrate(self, cluster: Cluster) -> dict:
        """Everything on one instance (make cluster N=1) but the saturated run (`saturated`)."""
        args = self.args
        per_instance = max(1, args.concurrency // args.instances)
        components = self.components(cluster)
        out = {"quiet": self.quiet(components), "direct": {}, "per_instance_concurrency": per_instance}
        direct = cluster.instance_urls[0]
        for kind in ("plain", "stream"):
            for concurrency in sorted({per_instance, args.concurrency}):
                out["direct"][f"{kind}_c{concurrency}"] = figure = self.load(components, direct, kind, concurrency)
                show(f"N=1 {kind} c={concurrency} (at the instance)", figure)
        out["via_nginx"] = figure = self.load(components, cluster.url, "plain", args.concurrency)
        show(f"N=1 plain c={args.concurrency} (through nginx)", figure)
        if args.streams:
            out["held"] = held = asyncio.run(hold_streams(cluster.url, self.relay.key, args.streams,
                                                          args.hold_seconds, components, cluster.instance_pids[0]))
            print(f"N=1 {held['open']}/{args.streams} streams open through nginx: CPU ms per stream-second "
                  + ", ".join(f"{k} {v:.4f}" for k, v in held["cpu_ms_per_stream_second"].items() if v)
                  + f"; Relay RSS +{held['rss_growth_mb']} MB ({held['kb_per_stream']} KB per stream)")
            self.quiet(components, 5.0)  # the closed streams settle before the next figure
        return out

    def saturated(self, cluster: Cluster) -> dict:
        """One instance at the concurrency each of N will see, beside N - 1 busy loops standing in for
        the other instances: every core contended, as in the N-instance cluster, without its requests."""
        per_instance = max(1, self.args.concurrency // self.args.instances)
        stand_ins = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                     for _ in range(min(self.args.instances, os.cpu_count() or 1) - 1)]
        try:
            figure = self.load(self.components(cluster, [p.pid for p in stand_ins]), cluster.instance_urls[0],
                               "plain", per_instance, 1, self.args.cycle_seconds)
        finally:
            for process in stand_ins:
                process.kill()
                process.wait()
        show(f"N=1 plain c={per_instance} + {len(stand_ins)} busy loop(s)", figure)
        return figure

    def measure(self, cluster: Cluster) -> dict:
        figure = self.load(self.components(cluster), cluster.url, "plain", self.args.concurrency, 1,
                           self.args.cycle_seconds)
        show(f"N={self.args.instances} plain c={self.args.concurrency} (through nginx)", figure)
        return figure

    def stop(self) -> dict:
        try:
            return self.relay.reconcile()
        finally:
            try:
                self.relay.stop()
            finally:
                self.fake.terminate()
                self.static.stop()


async def hold_streams(url: str, key: str, count: int, window: float, components: Components, pid: int) -> dict:
    """`count` streams open at once (one token a second); over `window` seconds while all are open,
    CPU ms per stream-second by component, and the instance's memory per open stream."""
    rss_before = rss_kb(pid)
    all_open, done = asyncio.Event(), asyncio.Event()
    opened = 0
    tokens = int(window + 150)  # outlives the ramp and the window: the client closes them
    payload = json.dumps({"model": MODELS["held"], "stream": True, "temperature": 0.7, "max_tokens": tokens,
                          "messages": [{"role": "user", "content": f"hold [[fake: tps={HELD_TPS} tokens={tokens}]]"}]})

    async def one():
        nonlocal opened
        conn = Connection(url)
        try:
            if not await open_stream(conn, PATH, key, payload.encode()):
                return
            opened += 1
            if opened == count:
                all_open.set()
            await done.wait()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            conn.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    try:
        await asyncio.wait_for(all_open.wait(), timeout=120)
    except TimeoutError:
        pass
    open_now = opened
    before, started = components.snapshot(), time.perf_counter()
    await asyncio.sleep(window)
    after, elapsed = components.snapshot(), time.perf_counter() - started
    rss_open = rss_kb(pid)
    done.set()
    await asyncio.gather(*tasks)
    cpu = per_request(before, after, 1)
    stream_seconds = max(1, open_now) * elapsed
    return {"open": open_now, "seconds": round(elapsed, 2), "tokens_per_s": HELD_TPS,
            "cpu_ms_per_stream_second": {k: round(v / stream_seconds, 4) for k, v in cpu.items()},
            "rss_growth_mb": round((rss_open - rss_before) / 1024, 1),
            "kb_per_stream": round((rss_open - rss_before) / max(1, open_now), 1)}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def show(title: str, figure: dict) -> None:
    cpu = figure["cpu_ms_per_request"]
    print(f"{title:42} {figure['rps']:7.1f} req/s  p50 {figure['p50_ms']} ms  errors {figure['errors']}  "
          f"others on the machine {figure['background_ms_per_s']:.0f} ms/s", flush=True)
    print(" " * 6 + "CPU ms/request: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items() if v), flush=True)


STREAM_PROFILES = {"1 token/s, 60 s each": (1.0, 60.0), "20 tokens/s, 20 s each": (20.0, 20.0)}


def predict(calibration: dict, saturated: dict, args) -> dict:
    """The model from the calibration on one instance alone. `saturated` is that instance beside busy
    loops standing in for the other instances: CPU per request grows when every core is contended
    (the unloaded figure is an idle core's), and what the (shared) machine's other programs got
    meanwhile is what they will get from a saturated cluster."""
    per_instance = calibration["per_instance_concurrency"]
    plain = calibration["direct"][f"plain_c{per_instance}"]
    via_nginx = calibration["via_nginx"]
    same_connections = calibration["direct"][f"plain_c{args.concurrency}"]
    terms = model.per_request_terms(saturated, via_nginx, same_connections)
    unloaded = model.per_request_terms(plain, via_nginx, same_connections)
    celery_ms_per_s = via_nginx["cpu_ms_per_request"].get("celery", 0.0) * via_nginx["rps"]
    cores = os.cpu_count() or 1

    def cluster(instances: int, per_request: dict, background_ms_per_s: float) -> dict:
        return model.predict_cluster(per_request, instances=instances, cores=cores,
                                     background_ms_per_s=background_ms_per_s, fixed_ms_per_s=celery_ms_per_s)

    out = {"per_core_rps": model.per_core(terms), "per_core_rps_unloaded": model.per_core(unloaded),
           "cores_for_1000_rps": model.cores_for_requests(terms, 1000),
           "cores_for_1000_rps_unloaded": model.cores_for_requests(unloaded, 1000),
           "cluster": cluster(args.instances, terms, saturated["background_ms_per_s"]),
           "cluster_from_unloaded_terms": cluster(args.instances, unloaded, saturated["background_ms_per_s"])}
    held = calibration.get("held")
    if held:
        streams = model.stream_terms(plain, calibration["direct"][f"stream_c{per_instance}"], held, CHUNKS)
        out["stream_terms_ms"] = streams
        out["cores_for_1000_streams"] = {
            name: model.cores_for_streams(streams, streams=1000, tokens_per_s=tps, seconds=seconds,
                                          held_tokens_per_s=held["tokens_per_s"])
            for name, (tps, seconds) in STREAM_PROFILES.items()}
        out["relay_mb_for_1000_streams"] = round(held["kb_per_stream"] * 1000 / 1024, 1)
    return out


def record(prediction: dict, calibration: dict, saturated: dict, cycle: int) -> Path:
    """The prediction, timestamped, on disk before its measurement starts."""
    when = datetime.datetime.now(datetime.UTC)
    folder = ROOT / "var" / "capacity"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prediction-{when.strftime('%Y%m%dT%H%M%SZ')}-cycle{cycle}.json"
    path.write_text(json.dumps({"recorded_at": when.isoformat(timespec="seconds"), "prediction": prediction,
                                "calibration": {**calibration, "saturated": saturated}}, indent=2, sort_keys=True))
    return path


def print_model(prediction: dict) -> None:
    print(f"per core: Relay {prediction['per_core_rps']['relay']} req/s, the whole stack "
          f"{prediction['per_core_rps']['whole_stack']} req/s (unloaded: {prediction['per_core_rps_unloaded']})")
    print(f"cores for 1,000 plain req/s: {json.dumps(prediction['cores_for_1000_rps'])}")
    print(f"  (from an unloaded instance's terms: {json.dumps(prediction['cores_for_1000_rps_unloaded'])})")
    for name, cores in prediction.get("cores_for_1000_streams", {}).items():
        print(f"cores for 1,000 open streams ({name}): {json.dumps(cores)}")
    if "relay_mb_for_1000_streams" in prediction:
        print(f"Relay memory for 1,000 open streams: {prediction['relay_mb_for_1000_streams']} MB")


def print_prediction(prediction: dict, path: Path) -> None:
    cluster = prediction["cluster"]
    print(f"N={cluster['instances']} plain req/s predicted: {cluster['rps']} ({cluster['bound']}-bound: "
          f"{cluster['available_core_ms_per_s']} core-ms/s available / {cluster['total_cpu_ms_per_request']} ms "
          f"per request; {cluster['rps_on_an_idle_machine']} on an idle machine; from the unloaded terms "
          f"{prediction['cluster_from_unloaded_terms']['rps']}), recorded in {path.relative_to(ROOT)}", flush=True)


def compare(prediction: dict, plain: dict) -> dict:
    """Measured vs predicted, and each term of the model beside what the cluster really spent."""
    cluster = prediction["cluster"]
    spent = {name: plain["cpu_ms_per_request"].get(name, 0.0) for name in cluster["cpu_ms_per_request"]}
    # The same formula with the measured run's terms and others' CPU: which input moved, or the formula.
    redone = model.predict_cluster(spent, instances=cluster["instances"], cores=cluster["cores"],
                                   background_ms_per_s=plain["background_ms_per_s"],
                                   fixed_ms_per_s=plain["cpu_ms_per_request"].get("celery", 0.0) * plain["rps"])
    return {"predicted_rps": cluster["rps"], "measured_rps": plain["rps"],
            "error_pct": model.error_pct(plain["rps"], cluster["rps"]),
            "unloaded_terms_error_pct": model.error_pct(plain["rps"], prediction["cluster_from_unloaded_terms"]["rps"]),
            "terms_predicted_vs_measured": {name: [cluster["cpu_ms_per_request"][name], round(spent[name], 3)]
                                            for name in spent},
            "others_ms_per_s_predicted_vs_measured": [cluster["background_ms_per_s"], plain["background_ms_per_s"]],
            "formula_with_measured_inputs_rps": redone["rps"]}


def cycles(bench: Bench, one: Cluster, calibration: dict, out: dict) -> None:
    """Each cycle: the saturated run on N=1, the prediction recorded, then N instances measured.
    Both clusters are up, so that a cycle takes seconds: on a shared machine, what other programs
    use, and the CPU a request costs beside them, drift within a minute (pooling the cycles'
    saturated runs lagged that drift: +10.5% overall where the latest run alone gave +0.5%), so
    each prediction is from the run just before its measurement."""
    args = bench.args
    many = Cluster(bench.relay.env, args.instances, args.celery)
    try:
        for cycle in range(1, args.cycles + 1):
            saturated = bench.saturated(one)
            prediction = predict(calibration, saturated, args)
            path = record(prediction, calibration, saturated, cycle)
            if cycle == 1:
                print_model(prediction)
            print_prediction(prediction, path)
            comparison = compare(prediction, bench.measure(many))
            out["cycles"].append({"prediction_file": str(path.relative_to(ROOT)), "prediction": prediction,
                                  "saturated": saturated, **comparison})
            print(f"cycle {cycle}: N={args.instances} measured {comparison['measured_rps']} req/s vs predicted "
                  f"{comparison['predicted_rps']}: error {comparison['error_pct']:+.1f}% (from the unloaded terms "
                  f"{comparison['unloaded_terms_error_pct']:+.1f}%)")
            print(f"  terms (predicted, measured ms/request): {json.dumps(comparison['terms_predicted_vs_measured'])}")
            print(f"  others on the machine (predicted, measured ms/s): "
                  f"{comparison['others_ms_per_s_predicted_vs_measured']}; the formula with the measured inputs: "
                  f"{comparison['formula_with_measured_inputs_rps']} req/s", flush=True)
    finally:
        many.stop()


def summarize(done: list[dict]) -> dict:
    """The mean of the recorded predictions against the mean measured figure: other programs' CPU
    moves by hundreds of ms per second within seconds here, and averages out over the cycles."""
    predicted = statistics.mean(c["predicted_rps"] for c in done)
    measured = statistics.mean(c["measured_rps"] for c in done)
    unloaded = statistics.mean(c["prediction"]["cluster_from_unloaded_terms"]["rps"] for c in done)
    errors = [abs(c["error_pct"]) for c in done if c["error_pct"] is not None]
    return {"predicted_rps": round(predicted, 1), "measured_rps": round(measured, 1),
            "error_pct": model.error_pct(measured, predicted),
            "unloaded_terms_error_pct": model.error_pct(measured, unloaded),
            "median_abs_cycle_error_pct": round(statistics.median(errors), 1) if errors else None,
            "max_abs_cycle_error_pct": round(max(errors), 1) if errors else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="of each calibration figure (the best is kept)")
    parser.add_argument("--cycles", type=int, default=6, help="saturated calibration, prediction, measurement")
    parser.add_argument("--cycle-seconds", type=float, default=5, help="of each run in a cycle")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--streams", type=int, default=1000, help="held open at once in the calibration (0: none)")
    parser.add_argument("--hold-seconds", type=float, default=10)
    parser.add_argument("--no-celery", dest="celery", action="store_false", help="clusters without worker and beat")
    args = parser.parse_args()
    bench = Bench(args)
    out = {"seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency,
           "instances": args.instances, "cores": os.cpu_count(), "cycles": []}
    try:
        one = Cluster(bench.relay.env, 1, args.celery)
        try:
            out["calibration"] = calibration = bench.calibrate(one)
            cycles(bench, one, calibration, out)
        finally:
            one.stop()
    finally:
        out["reconcile"] = books = bench.stop()
    if out["cycles"]:
        out["overall"] = overall = summarize(out["cycles"])
        print(f"over {len(out['cycles'])} cycles: N={args.instances} measured {overall['measured_rps']} req/s "
              f"(mean) vs predicted {overall['predicted_rps']} (mean of the recorded predictions): error "
              f"{overall['error_pct']:+.1f}%; per cycle |error| median {overall['median_abs_cycle_error_pct']}%, "
              f"max {overall['max_abs_cycle_error_pct']}%; from the unloaded terms {overall['unloaded_terms_error_pct']:+.1f}%")
    print_reconcile(books)
    print_result(out)


if __name__ == "__main__":
    main()

"""Routing: one model on three deployments, one of them failing then healing, behind Relay and LiteLLM Proxy.

Run: python bench/routing.py [--seconds 20] [--heal-at 8] [--concurrency 16] [--rounds 3] [--instances 2]
                            [--failure 500|429|refused] [--strategy least_busy] [--only relay|litellm]
     (DATABASE_URL and REDIS_URL point at PostgreSQL and Redis, as for bench/load.py)

The deployments: three fake upstreams (tests/support/fake_upstream.py, each its own process), all
answering 20 tokens at 200 tokens/s: `healthy` (first token after 20 ms), `slow` (400 ms) and
`failing` (20 ms once healed). The model `bench-routed` is served by the three; `bench-fallback`, its
fallback, by `healthy` alone. The same settings on both targets: strategy least-busy, a deployment's
3rd failure within 5 s puts it in cooldown for 5 s, 2 retries on another deployment, then the fallback.
  relay    --instances Relay processes (python -m relay.serve) on one database and Redis, models made
           by agents.actions.endpoints.create_endpoint; API-key auth and a hard budget on the key
           (reserve + settle across retries and fallbacks), usage records, audit and metrics all on.
  litellm  LiteLLM Proxy (the version pinned in bench/_litellm.py, installed by bench/load.py's
           helper into var/litellm/venv-<python>), --instances workers sharing router state in the same Redis
           (router_settings.redis_url), master key, no database.
Both get the same number of processes and share their routing state across them through Redis
(LiteLLM: cooldowns, failure counts and least-busy counts), on the same cores; the load tool sends
each virtual user's requests to Relay's processes in turn, while LiteLLM's workers share one
listening socket (the kernel spreads the connections). Relay does more per request (key lookup,
budget reserve and settle, usage record, audit event), as in bench/load.py. LiteLLM cools a
deployment down when its failures exceed `allowed_fails`, Relay when they reach it, so LiteLLM is
given allowed_fails - 1: both cool a deployment at its 3rd failure; LiteLLM keeps that count for
cooldown_time seconds, so Relay's failure window is set to the cooldown too.

A round, per target: all deployments healthy, --warmup seconds of load (not measured); then
`failing` fails every request (--failure: 500, 429 with Retry-After, or connection refused: its
process is stopped) and the measured load starts at t0; at T = t0 + --heal-at it heals (the
upstream's control endpoint, or its process restarted on the same port); the load stops at
t0 + --seconds. Load: --concurrency virtual users, each sending streamed requests (stream=true on
/v1/chat/completions, a new prompt each time, temperature 0.7) back to back. Rounds alternate
the targets (relay, litellm; then litellm, relay; ...); each figure is the median of the rounds.

Figures (per target and round; `relay.*` and `litellm.*` are medians over the rounds):
  success_rate        requests that got a 200 and a whole stream (`data: [DONE]`, no error chunk),
                      over the requests started in [t0, t0 + seconds)
  p50_ms, p99_ms      whole-response latency of the successful ones
  recover_s           from T until the first request the healed deployment answered successfully
                      arrived there (its own record, the same monotonic clock); null: not within the round
  clean_after_heal_s  from T until the end of the last failed request (0 when none ended after T):
                      when the success rate is back to 100%
  attempts_per_request  upstream calls per request (retries and fallbacks included; a refused
                      connection reaches no upstream, so --failure refused does not count those)
  healed_share        of the successful upstream calls after recovery, the share the healed one served
  upstreams           per deployment, calls / successes / failures over the round
The last line is one JSON object: those medians, `relay_success_at_least_litellm`,
`relay_p99_lower`, the settings, every round's figures and Relay's `reconcile` after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import _litellm  # noqa: I001  (bench-local helpers)
import httpx
from _load import Connection
from _relay import percentile, print_result
from _routing_targets import (
    MODEL,
    STRATEGIES,
    Settings,
    Upstream,
    forget_litellm_keys,
    start_litellm,
    start_relay,
    start_upstreams,
)
from load import print_reconcile

PATH = "/v1/chat/completions"
MEDIAN_KEYS = ("success_rate", "p50_ms", "p99_ms", "recover_s", "clean_after_heal_s")


def verdict(status: int, payload: bytes) -> str | None:
    """None when the response is a whole stream; else why not."""
    if status != 200:
        return f"HTTP {status}: {payload[:160]!r}"
    if b"data: [DONE]" not in payload:
        return f"stream without [DONE]: {payload[-160:]!r}"
    if b'"error"' in payload:  # only then parse: an error chunk is a JSON object with an "error" key
        for line in payload.split(b"\n"):
            if line.startswith(b"data: {"):
                try:
                    event = json.loads(line[6:])
                except ValueError:
                    return f"not JSON: {line[:160]!r}"
                if isinstance(event, dict) and "error" in event:
                    return f"error chunk: {line[6:166]!r}"
    return None


async def drive(urls: list[str], headers: dict, concurrency: int, seconds: float,
                timeout: float) -> list[tuple[float, float, str | None]]:
    """Each virtual user sends streamed requests back to back for `seconds`, to `urls` in turn;
    every request as (start, end, why it failed or None), on time.monotonic()."""
    headers = {"Content-Type": "application/json", **headers}
    stop_at = time.monotonic() + seconds
    log: list[tuple[float, float, str | None]] = []
    counter = iter(range(10**9))

    async def user(first: int):
        conns = [Connection(url) for url in urls]
        turn = first
        while time.monotonic() < stop_at:
            conn, turn = conns[turn % len(conns)], turn + 1
            # A new question each time: no response cache answers in a deployment's place.
            body = json.dumps({"model": MODEL, "stream": True, "temperature": 0.7, "messages": [
                {"role": "user", "content": f"routing benchmark question {next(counter)}"}]}).encode()
            begin = time.monotonic()
            try:
                status, payload = await asyncio.wait_for(conn.request("POST", PATH, body, headers), timeout)
                why = verdict(status, payload)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
                conn.close()
                why = f"{error.__class__.__name__}: {error}"
            log.append((begin, time.monotonic(), why))
        for conn in conns:
            conn.close()

    await asyncio.gather(*(user(i) for i in range(concurrency)))
    return log


async def break_failing(failing: Upstream, client: httpx.AsyncClient, args) -> None:
    if args.failure == "refused":
        failing.stop()
    else:
        status = 429 if args.failure == "429" else 500
        await failing.control(client, fail_all=True, fail_status=status,
                              retry_after=args.retry_after if args.failure == "429" else None)


async def heal_failing(failing: Upstream, client: httpx.AsyncClient) -> float:
    """Heal it; the moment it was healed, on the upstream's clock (time.monotonic, machine-wide)."""
    if not failing.running:
        healed_at = time.monotonic()
        await asyncio.to_thread(failing.start)  # a fresh process: it counts from its start
        return healed_at
    return (await failing.control(client, fail_all=False, fail_status=500, retry_after=None))["changed_at"]


async def run_round(target: tuple[list[str], dict], upstreams: dict[str, Upstream], args) -> dict:
    urls, headers = target
    failing = upstreams["failing"]
    async with httpx.AsyncClient(timeout=10) as client:
        if args.warmup:
            await drive(urls, headers, args.concurrency, args.warmup, args.request_timeout)
        await break_failing(failing, client, args)
        t0 = time.monotonic()
        load = asyncio.create_task(drive(urls, headers, args.concurrency, args.seconds, args.request_timeout))
        await asyncio.sleep(max(0.0, t0 + args.heal_at - time.monotonic()))
        healed_at = await heal_failing(failing, client)
        log = await load
        stats = {name: await upstream.stats(client, t0) for name, upstream in upstreams.items()}
        first_ok = stats["failing"]["first_ok_after_change"]
        after = {name: await upstream.stats(client, first_ok) for name, upstream in upstreams.items()} \
            if first_ok is not None else None
    return round_figures(log, t0, args.seconds, healed_at, stats, after)


def round_figures(log: list, t0: float, seconds: float, healed_at: float, stats: dict, after: dict | None) -> dict:
    measured = [entry for entry in log if t0 <= entry[0] < t0 + seconds]
    ok = [end - begin for begin, end, why in measured if why is None]
    failed = [(end, why) for _, end, why in measured if why is not None]
    first_ok = stats["failing"]["first_ok_after_change"]
    calls = sum(s["requests"] for s in stats.values())
    figures = {
        "requests": len(measured), "failed": len(failed),
        "success_rate": round(len(ok) / len(measured), 4) if measured else None,
        "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
        "recover_s": round(first_ok - healed_at, 3) if first_ok is not None else None,
        "clean_after_heal_s": round(max([end - healed_at for end, _ in failed if end > healed_at], default=0.0), 3),
        "attempts_per_request": round(calls / len(measured), 3) if measured else None,
        "upstreams": {name: {k: s[k] for k in ("requests", "ok", "failed")} for name, s in stats.items()},
    }
    if after is not None:
        served = sum(s["ok"] for s in after.values())
        figures["healed_share"] = round(after["failing"]["ok"] / served, 3) if served else None
    if failed:
        figures["error_samples"] = sorted({why for _, why in failed})[:5]
    return figures


def median_of(values: list) -> float | None:
    """The median; a missing figure (null: never recovered) counts as the worst."""
    if not values:
        return None
    worst = [float("inf") if v is None else v for v in values]
    middle = statistics.median(worst)
    return None if middle == float("inf") else round(middle, 4)


def summarize(rounds: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        for key in MEDIAN_KEYS:
            out[f"{name}.{key}"] = median_of([r[name][key] for r in rounds])
    if {"relay", "litellm"} <= set(names):
        rs, ls, rp, lp = (out[k] for k in ("relay.success_rate", "litellm.success_rate", "relay.p99_ms",
                                           "litellm.p99_ms"))
        out["relay_success_at_least_litellm"] = rs is not None and ls is not None and rs >= ls
        out["relay_p99_lower"] = rp is not None and lp is not None and rp < lp
    return out


def show(name: str, index: int, f: dict) -> None:
    recover = "never" if f["recover_s"] is None else f"{f['recover_s']:.2f} s"
    per = ", ".join(f"{n} {u['ok']}/{u['requests']}" for n, u in f["upstreams"].items())
    print(f"round {index + 1} {name:8} success {f['success_rate']:.2%} ({f['failed']} of {f['requests']} failed)  "
          f"p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  recover {recover}  clean after heal "
          f"{f['clean_after_heal_s']:.2f} s  attempts/request {f['attempts_per_request']}  [{per}]", flush=True)
    for sample in f.get("error_samples", []):
        print(f"    {sample}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per round")
    parser.add_argument("--heal-at", type=float, default=8, help="seconds into the round the failing one heals")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=2, help="Relay processes; LiteLLM workers")
    parser.add_argument("--failure", choices=("500", "429", "refused"), default="500")
    parser.add_argument("--retry-after", type=int, default=3, help="Retry-After seconds of --failure 429")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="least_busy")
    parser.add_argument("--allowed-fails", type=int, default=3, help="(not 4: LiteLLM reads its 3 as unset)")
    parser.add_argument("--cooldown", type=int, default=5, help="cooldown seconds (and the failure window)")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--request-timeout", type=float, default=30)
    parser.add_argument("--only", choices=("relay", "litellm"))
    args = parser.parse_args()
    if not 0 < args.heal_at < args.seconds:
        parser.error("--heal-at must fall inside --seconds")
    return args


def main():
    args = parse_args()
    settings = Settings(strategy=args.strategy, allowed_fails=args.allowed_fails, cooldown=args.cooldown,
                        retries=args.retries)
    names = [args.only] if args.only else ["relay", "litellm"]
    upstreams = start_upstreams(settings)
    relay, relay_others, litellm, books, targets = None, [], None, None, {}
    try:
        if "relay" in names:
            relay, relay_others, urls = start_relay(upstreams, settings, args.instances)
            targets["relay"] = (urls, {"Authorization": f"Bearer {relay.key}"})
        if "litellm" in names:
            litellm, url = start_litellm(upstreams, settings, args.instances, os.environ.get("REDIS_URL"))
            targets["litellm"] = ([url], {"Authorization": f"Bearer {_litellm.KEY}"})
        rounds = []
        for index in range(args.rounds):
            order = names if index % 2 == 0 else names[::-1]
            rounds.append({})
            for name in order:
                rounds[-1][name] = asyncio.run(run_round(targets[name], upstreams, args))
                show(name, index, rounds[-1][name])
    finally:
        for process in [*relay_others, *([litellm] if litellm else [])]:
            process.terminate()
            process.wait(30)
        if litellm:
            forget_litellm_keys(os.environ.get("REDIS_URL"))
        if relay is not None:
            try:  # before stop() drops the database: the books agree after retries and fallbacks
                books = relay.reconcile()
            finally:
                relay.stop()
        for upstream in upstreams.values():
            upstream.stop()
    summary = summarize(rounds, names)
    for key, value in summary.items():
        print(f"{key:34} {value}")
    if books is not None:
        print_reconcile(books)
    print_result({**summary, "rounds": rounds, "reconcile": books,
                  "settings": {**vars(args), "tokens": settings.tokens, "tps": settings.tps, "ttft": settings.ttft,
                               "slow_ttft": settings.slow_ttft, "model": MODEL}})


if __name__ == "__main__":
    main()

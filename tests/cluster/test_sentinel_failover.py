"""Redis under Sentinel: the primary is killed under load and a replica promoted; nothing is lost.

A primary, one replica and three Sentinels (quorum 2) on 127.0.0.1; two Relay instances pointed at
the Sentinels (REDIS_SENTINELS), clients streaming and asking against a hard budget without pause.
The primary dies by SIGKILL. While the Sentinels promote the replica every request gets a 200 or
a 503 with the error envelope (never a 500, never a hang), service returns within seconds of the
promotion, every client of Redis (cache, channel layer, ledger, router, Celery broker) reaches the
new primary, and `reconcile` then finds the ledger equal to the usage records: the reservations
the runs streamed against survived (the ledger waits for the replica, docs/design.md section 7).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal

import httpx
import psycopg
import pytest

from tests.cluster.sentinels import MASTER, ReplicatedRedis
from tests.cluster.support import (
    MODEL,
    Instance,
    chat,
    prepare,
    python_in,
    relay_env,
    require_cluster_services,
    scratch_database,
    wait_for,
)
from tests.reconciled import assert_reconciled_in
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig
from tests.support.streams import DONE, parse_sse

pytestmark = [pytest.mark.slow, pytest.mark.services]
REQUEST_BOUND = 25  # no request may take longer (the settle retry bound is 15 s)
RECOVERY_BOUND = 10  # every instance serves again within this many seconds of the promotion

# Every Redis client of an instance's configuration, asked once in a fresh process.
PROBE = """
import json, time, uuid
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.cache import cache
from agents.router.state import get_state
from billing.ledger import get_ledger
from relay.celery import app
from relay.health import _check_redis
mark = uuid.uuid4().hex
cache.set("probe", mark, 30)
layer = get_channel_layer()
async def channel_round_trip():
    name = await layer.new_channel()
    await layer.send(name, {"type": "probe", "mark": mark})
    return (await layer.receive(name))["mark"]
with app.connection_for_write() as connection:
    connection.ensure_connection(max_retries=3)
    broker = connection.connected
print(json.dumps({"cache": cache.get("probe") == mark, "channels": async_to_sync(channel_round_trip)() == mark,
                  "ledger": isinstance(async_to_sync(get_ledger().counters)(["x"]), dict),
                  "router": isinstance(get_state().snapshot(["probe"], time.time()), list), "health": _check_redis() is None, "broker": broker}))
"""


async def client_loop(url: str, key: str, stream: bool, stop: threading.Event, outcomes: list):
    """Requests back to back; each outcome is (started, seconds, status, failure or None, request id)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "failover"}], "stream": stream,
            "temperature": 0.5}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_BOUND + 5,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                    text = (await response.aread()).decode()
            except httpx.HTTPError as error:
                outcomes.append((started, time.monotonic() - started, 0, f"{error.__class__.__name__}", None))
                continue
            outcomes.append((started, time.monotonic() - started, response.status_code,
                             _failure(response.status_code, text, stream), _request_id(response.status_code, text)))
            if response.status_code == 503:
                await asyncio.sleep(0.05)  # a client backing off, as Retry-After asks


def _failure(status: int, text: str, stream: bool) -> str | None:
    if status == 503:
        error = json.loads(text).get("error", {})
        return None if error.get("code") and error.get("message") else f"503 without the envelope: {text[:200]}"
    if status != 200:
        return f"HTTP {status}: {text[:300]}"
    if stream:
        chunks = parse_sse(text.splitlines())
        if DONE not in text or chunks[-1]["choices"][0]["finish_reason"] != "stop":
            return f"stream cut: {text[-300:]}"
    return None


def _request_id(status: int, text: str) -> str | None:
    if status != 200:
        return None
    first = parse_sse(text.splitlines())[0] if text.startswith("data:") else json.loads(text)
    return first["id"].removeprefix("chatcmpl-")


async def load(urls: list[str], key: str, stop: threading.Event) -> list:
    outcomes: list = []
    await asyncio.gather(*(client_loop(url, key, stream, stop, outcomes)
                           for url in urls for stream in (True, True, False)))
    return outcomes


def test_primary_killed_under_load_fails_over_with_503s_only_and_loses_no_money(tmp_path):
    require_cluster_services()
    redis = ReplicatedRedis(replicas=1, sentinels=3, down_after_ms=1000, failover_timeout_ms=3000)
    upstream = FakeUpstream(FakeUpstreamConfig(tokens=20, tps=40)).start()  # streams of ~0.5 s
    instances: list[Instance] = []
    try:
        with scratch_database() as database_url:
            env = relay_env(database_url, f"redis://{MASTER}/0", REDIS_SENTINELS=redis.sentinel_setting,
                            REDIS_SENTINEL_MASTER=MASTER)
            key = prepare(env, upstream.base_url)
            instances = [Instance(env, tmp_path) for _ in range(2)]
            stop, result = threading.Event(), {}
            loader = threading.Thread(target=lambda: result.update(
                outcomes=asyncio.run(load([i.url for i in instances], key, stop))))
            loader.start()
            try:
                time.sleep(2)  # load on both instances before the fault
                redis.primary.kill()
                killed = time.monotonic()
                promoted = wait_for(redis.promoted, 20)
                assert promoted is not None, "the Sentinels promoted no replica"
                promotion = time.monotonic()
                back = wait_for(lambda: _serving(instances, key), RECOVERY_BOUND + 10, interval=0.1)
                time.sleep(2)  # and load on the new primary
            finally:
                stop.set()
                loader.join(REQUEST_BOUND + 10)
            outcomes = result["outcomes"]
            print(f"\nfailover: promoted {promotion - killed:.2f} s after the kill; "
                  f"{len(outcomes)} requests, {sum(o[2] == 503 for o in outcomes)} 503s; "
                  f"service back {(back or promotion) - promotion:.2f} s after the promotion; "
                  f"slowest request {max(o[1] for o in outcomes):.2f} s")

            failures = [o[3] for o in outcomes if o[3]]
            assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
            assert {o[2] for o in outcomes} <= {200, 503}
            assert max(o[1] for o in outcomes) < REQUEST_BOUND, "a request hung"
            assert back is not None and back - promotion <= RECOVERY_BOUND, "service did not return"
            assert sum(o[2] == 200 and o[0] > promotion for o in outcomes) >= 5, "no load after the promotion"
            assert sum(o[2] == 200 and o[0] < killed for o in outcomes) >= 5, "no load before the kill"

            assert all(python_in(env, PROBE).values()), "a Redis client did not reach the new primary"
            served = {o[4] for o in outcomes if o[2] == 200}
            with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
                usage = {row[0] for row in conn.execute("SELECT request_id FROM billing_usagerecord")}
                spent = conn.execute("SELECT coalesce(sum(cost), 0) FROM billing_usagerecord").fetchone()[0]
                limit = conn.execute("SELECT limit_usd FROM billing_budget").fetchone()[0]
            assert served - usage == set(), "answers served without a usage record"
            assert Decimal(spent) <= Decimal(limit)
            assert_reconciled_in(env)  # the ledger equals the records: no reservation or settlement lost
    finally:
        for instance in instances:
            instance.stop()
        upstream.stop()
        redis.stop()


def _serving(instances: list, key: str) -> float | None:
    """When every instance has just answered a completion (None: one did not)."""
    for instance in instances:
        try:
            if chat(instance.url, key, timeout=REQUEST_BOUND).status_code != 200:
                return None
        except httpx.HTTPError:
            return None
    return time.monotonic()

"""A rolling restart under load fails no request and loses no usage record or audit event.

Two instances behind nginx (platform/scripts/cluster.py, as `make cluster` runs it), clients
sending streamed and plain completions without pause, and `cluster.py restart` taking each
instance out of nginx, draining it with SIGTERM, starting it again and waiting for /readyz.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import httpx
import psycopg
import pytest

from tests.cluster.support import (
    MODEL,
    ROOT,
    prepare,
    relay_env,
    require_cluster_services,
    scratch_database,
)
from tests.reconciled import assert_reconciled_in
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig
from tests.support.ports import free_port, free_port_run
from tests.support.streams import DONE, parse_sse

pytestmark = [pytest.mark.slow, pytest.mark.services]


async def client_loop(url: str, key: str, stream: bool, stop: threading.Event, outcomes: list):
    """One client sending requests back to back; records (request id or None, failure or None)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "rolling restart"}], "stream": stream,
            "temperature": 0.5}
    headers = {"Authorization": f"Bearer {key}"}
    # A connection per request: an nginx reload closes idle keep-alive client connections, and a
    # request racing that close is a transport-level retry for the client (the OpenAI SDK retries
    # it), not a failure of Relay; this test counts Relay's failures.
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stop.is_set():
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                    text = (await response.aread()).decode()
                if response.status_code != 200:
                    outcomes.append((None, f"HTTP {response.status_code}: {text[:200]}"))
                elif stream:
                    chunks = parse_sse(text.splitlines())
                    finished = DONE in text and chunks[-1]["choices"][0]["finish_reason"] == "stop"
                    outcomes.append((chunks[0]["id"], None if finished else f"stream cut: {text[-200:]}"))
                else:
                    outcomes.append((json.loads(text)["id"], None))
            except httpx.HTTPError as error:
                outcomes.append((None, f"{error.__class__.__name__}: {error}"))


async def load_until(url: str, key: str, stop: threading.Event) -> list:
    outcomes: list = []
    await asyncio.gather(*(client_loop(url, key, stream, stop, outcomes) for stream in (True, True, True, False, False)))
    return outcomes


def test_rolling_restart_under_load_fails_nothing_and_records_everything(tmp_path):
    require_cluster_services()
    from django.conf import settings

    # Streams of ~1 s, so several are in flight on the instance being drained.
    upstream = FakeUpstream(FakeUpstreamConfig(tokens=30, tps=30)).start()
    state_dir = tmp_path / "cluster"
    nginx_port = free_port()
    script = [sys.executable, str(ROOT / "platform" / "scripts" / "cluster.py"), "--state-dir", str(state_dir)]
    try:
        with scratch_database() as database_url:
            env = relay_env(database_url, settings.REDIS_URL, RELAY_DRAIN_SECONDS=20)
            key = prepare(env, upstream.base_url)
            started = subprocess.run([*script, "start", "-n", "2", "--no-celery", "--port", str(nginx_port),
                                      "--base-port", str(free_port_run(2)), "--nginx-workers", "1"], env=env,
                                     timeout=150, capture_output=True, text=True)
            try:
                assert started.returncode == 0, started.stderr[-3000:]
                stop = threading.Event()
                result: dict = {}
                loader = threading.Thread(target=lambda: result.update(
                    outcomes=asyncio.run(load_until(f"http://127.0.0.1:{nginx_port}", key, stop))))
                loader.start()
                try:
                    restart = subprocess.run([*script, "restart"], env=env, timeout=120, capture_output=True,
                                             text=True)
                finally:
                    stop.set()
                    loader.join(90)
                assert restart.returncode == 0, restart.stderr[-3000:]
                assert restart.stdout.count("restarted api") == 2
            finally:
                subprocess.run([*script, "stop"], env=env, timeout=120)

            outcomes = result["outcomes"]
            failures = [failure for _id, failure in outcomes if failure]
            assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
            assert len(outcomes) >= 20, "the load did not run through the restarts"
            request_ids = {completion_id.removeprefix("chatcmpl-") for completion_id, _ in outcomes}
            with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
                usage = {row[0] for row in conn.execute(
                    "SELECT request_id FROM billing_usagerecord WHERE status = 'complete'")}
                audited = {row[0] for row in conn.execute(
                    "SELECT metadata->>'run_id' FROM audit_auditevent WHERE action = 'agent.run'")}
            assert request_ids - usage == set(), "requests without a usage record"
            assert request_ids - audited == set(), "requests without an audit event"
            assert_reconciled_in(env)
    finally:
        upstream.stop()

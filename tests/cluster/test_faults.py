"""Faults: Redis stopped, PostgreSQL restarted — 503s with the envelope meanwhile, service back by itself.

Each test runs one production Relay instance (python -m relay.serve) on services of its own,
so stopping them disturbs no other test.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.cluster.support import (
    Instance,
    PrivatePostgres,
    PrivateRedis,
    chat,
    prepare,
    relay_env,
    require_cluster_services,
    scratch_database,
    wait_for,
)
from tests.reconciled import assert_reconciled_in
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig

pytestmark = [pytest.mark.slow, pytest.mark.services]
RECOVERY_SECONDS = 5


def assert_unavailable(response: httpx.Response) -> None:
    """A refusal a client can act on: 503, the error envelope, never a 500 or an unchecked answer."""
    assert response.status_code == 503, (response.status_code, response.text[:300])
    body = response.json()
    # /readyz adds its per-check details beside the envelope
    assert body["error"]["code"] in {"service_unavailable", "ledger_unavailable", "not_ready"}, body
    assert body["error"]["message"]
    assert response.request.url.path == "/readyz" or set(body) == {"error"}, body


def calls(instance: Instance, key: str) -> list[httpx.Response]:
    """What a client does: a plain and a streamed completion, and the readiness probe."""
    return [chat(instance.url, key, timeout=10), chat(instance.url, key, stream=True, timeout=10),
            httpx.get(f"{instance.url}/readyz", timeout=10)]


def served(instance: Instance, key: str) -> bool:
    try:
        return all(r.status_code == 200 for r in calls(instance, key))
    except httpx.HTTPError:
        return False


@pytest.fixture
def upstream():
    with FakeUpstream(FakeUpstreamConfig(tokens=5)) as server:
        yield server


def test_redis_stop_gives_503s_and_service_returns_within_5s(tmp_path, upstream):
    require_cluster_services()
    redis = PrivateRedis()
    try:
        with scratch_database() as database_url:
            env = relay_env(database_url, redis.url)
            key = prepare(env, upstream.base_url)
            instance = Instance(env, tmp_path)
            try:
                assert served(instance, key)
                redis.stop()
                for _ in range(3):  # the key was cached in Redis; every path must fail closed
                    for response in calls(instance, key):
                        assert_unavailable(response)
                assert httpx.get(f"{instance.url}/healthz", timeout=5).status_code == 200  # alive, not ready
                requests_upstream = len(upstream.requests)
                redis.start()
                back = time.monotonic()
                assert wait_for(lambda: served(instance, key), RECOVERY_SECONDS + 5)
                assert time.monotonic() - back <= RECOVERY_SECONDS
                # Nothing ran unchecked during the outage: the upstream saw no call then.
                assert len(upstream.requests) > requests_upstream
                assert_reconciled_in(env)  # Redis lost its counters: they load again from the records
            finally:
                instance.stop()
    finally:
        redis.stop()


def test_postgres_restart_gives_503s_and_service_returns_within_5s(tmp_path, upstream, settings):
    require_cluster_services()
    postgres = PrivatePostgres()
    try:
        env = relay_env(postgres.url, settings.REDIS_URL)
        key = prepare(env, upstream.base_url)
        instance = Instance(env, tmp_path)
        try:
            assert served(instance, key)
            postgres.stop()
            seen_upstream = len(upstream.requests)
            for _ in range(3):
                for response in calls(instance, key):
                    assert_unavailable(response)
            assert len(upstream.requests) == seen_upstream  # no model call without its usage record
            postgres.start()
            back = time.monotonic()
            assert wait_for(lambda: served(instance, key), RECOVERY_SECONDS + 5)
            assert time.monotonic() - back <= RECOVERY_SECONDS
            assert_reconciled_in(env)
        finally:
            instance.stop()
    finally:
        postgres.destroy()

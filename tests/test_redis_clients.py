"""relay.redis_clients: one setting (REDIS_SENTINELS + REDIS_SENTINEL_MASTER) shapes every Redis client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.redis_clients import (
    SentinelConfigError,
    Target,
    cache_location,
    celery_broker,
    channel_layer_host,
    parse_sentinels,
)

ROOT = Path(__file__).resolve().parent.parent
SENTINEL_ENV = {"REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380", "REDIS_SENTINEL_MASTER": "relay",
                "REDIS_URL": "redis://:s%40cret@ignored:1/3", "REDIS_SENTINEL_PASSWORD": "watch"}


def test_sentinels_parse_and_a_bad_entry_is_an_error():
    assert parse_sentinels("a:1, b:2,") == (("a", 1), ("b", 2))
    for bad in ("a", "a:", ":1", "a:x", "a:70000"):
        with pytest.raises(SentinelConfigError):
            parse_sentinels(bad)


def test_sentinels_need_their_master_and_the_master_its_sentinels():
    with pytest.raises(SentinelConfigError, match="REDIS_SENTINEL_MASTER"):
        Target.from_environment({"REDIS_SENTINELS": "a:1"})
    with pytest.raises(SentinelConfigError, match="without REDIS_SENTINELS"):
        Target.from_environment({"REDIS_SENTINEL_MASTER": "relay"})


def test_without_sentinels_every_client_uses_the_url_as_before():
    target = Target.from_environment({"REDIS_URL": "redis://127.0.0.1:6379/4"})
    assert not target.sentinel
    assert cache_location(target) == ("redis://127.0.0.1:6379/4", {})
    assert channel_layer_host(target, socket_timeout=30) == {"address": "redis://127.0.0.1:6379/4", "socket_timeout": 30}
    assert celery_broker(target) == ("redis://127.0.0.1:6379/4", {})


def test_with_sentinels_the_url_gives_only_database_and_password():
    target = Target.from_environment(SENTINEL_ENV)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380)) and target.master == "relay"
    assert target.primary_kwargs() == {"db": 3, "password": "s@cret"}
    location, options = cache_location(target)
    assert location == "redis://:s%40cret@relay/3"  # django-redis reads the master's name from the host
    assert options["CONNECTION_FACTORY"] == "django_redis.pool.SentinelConnectionFactory"
    assert options["SENTINELS"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert options["SENTINEL_KWARGS"]["password"] == "watch"
    host = channel_layer_host(target, socket_timeout=30)
    assert host["master_name"] == "relay" and host["db"] == 3 and host["password"] == "s@cret"
    assert host["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)] and host["socket_timeout"] == 30
    url, transport = celery_broker(target)
    assert url == "sentinel://:s%40cret@10.0.0.1:26379/3;sentinel://:s%40cret@10.0.0.2:26380/3"
    assert transport == {"master_name": "relay", "sentinel_kwargs": {"password": "watch"}}


def test_without_a_url_the_primary_is_database_0():
    target = Target.from_environment({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "relay"})
    assert target.url == "redis://relay/0" and target.primary_kwargs() == {"db": 0}


def test_clients_ask_the_sentinels_for_the_primary():
    from redis.asyncio.sentinel import SentinelConnectionPool as AsyncPool
    from redis.sentinel import SentinelConnectionPool

    from relay.redis_clients import async_client, sync_client

    target = Target.from_environment(SENTINEL_ENV)
    sync = sync_client(target, socket_timeout=1)
    assert isinstance(sync.connection_pool, SentinelConnectionPool)
    assert sync.connection_pool.service_name == "relay" and sync.connection_pool.connection_kwargs["db"] == 3
    pooled = async_client(target, max_connections=8, pool_timeout=2)
    assert isinstance(pooled.connection_pool, AsyncPool) and pooled.connection_pool.max_connections == 8
    assert pooled.connection_pool.timeout == 2  # the blocking pool's wait, kept under Sentinel


def test_settings_configure_cache_channels_celery_and_ledger_from_the_one_setting():
    code = ("from django.conf import settings as s; import json; print(json.dumps([s.CACHES['default']['OPTIONS']"
            "['CONNECTION_FACTORY'], s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0]['master_name'], "
            "s.CELERY_BROKER_URL.split(';')[0], s.CELERY_BROKER_TRANSPORT_OPTIONS['master_name'], "
            "s.RELAY_LEDGER_REPLICAS, s.REDIS_URL]))")
    # Redis named: production settings, which refuse the development key.
    env = {"SECRET_KEY": "test-" + "k" * 50, **os.environ, **SENTINEL_ENV, "DJANGO_SETTINGS_MODULE": "relay.settings"}
    env.pop("CELERY_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ('["django_redis.pool.SentinelConnectionFactory", "relay", '
                                   '"sentinel://:s%40cret@10.0.0.1:26379/3", "relay", 1, "redis://:s%40cret@ignored:1/3"]')
    bad = subprocess.run([sys.executable, "-c", "import relay.settings"], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "REDIS_SENTINEL_MASTER": ""}, timeout=60)
    assert bad.returncode != 0 and "REDIS_SENTINEL_MASTER" in bad.stderr


def test_every_client_parses_replies_with_hiredis():
    """requirements.txt pins hiredis for its ~3-5% of Relay's CPU per request under load (bench/README.md,
    2026-12-06); redis-py uses it only if it imports, so an install that lost it would be silently slower."""
    from redis._parsers import _AsyncHiredisParser, _HiredisParser

    from relay.redis_clients import async_client, sync_client

    target = Target.from_environment({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    sync = sync_client(target)
    assert sync.connection_pool.make_connection()._parser.__class__ is _HiredisParser
    pooled = async_client(target, max_connections=2)
    assert pooled.connection_pool.make_connection()._parser.__class__ is _AsyncHiredisParser

"""Every Redis client Relay makes comes from here: a server named by REDIS_URL, or a Sentinel-managed primary.

With REDIS_SENTINELS (`host:port,host:port,...`) and REDIS_SENTINEL_MASTER set, each client asks
the Sentinels where the primary is and asks again whenever a connection fails, so a failover
moves every client (cache, sessions, channel layer, ledger, rate limits, routing state,
heavy-work slots, health check, Celery broker) to the promoted replica on its next connection.
REDIS_URL then names only the primary's database, user and password (its host and port are not
used: `redis://:secret@primary/0`); REDIS_SENTINEL_PASSWORD is the Sentinels' own.

`settings.py` builds Django's, Channels' and Celery's configurations with the pure functions
below (`Target.from_environment`, `cache_location`, ...); code that talks to Redis itself calls
`sync_client` / `async_client`. Without REDIS_SENTINELS nothing changes: plain URLs, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit


class SentinelConfigError(ValueError):
    """REDIS_SENTINELS / REDIS_SENTINEL_MASTER cannot be used as given."""


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` -> ((host, port), ...); a bad entry is an error, never skipped."""
    found = []
    for entry in (item.strip() for item in text.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SentinelConfigError(f"REDIS_SENTINELS entry {entry!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


@dataclass(frozen=True)
class Target:
    """Where Redis is: `url`, or when `sentinels` is set the primary `master` they watch."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str = ""

    @classmethod
    def from_environment(cls, environ) -> Target:
        sentinels = parse_sentinels(environ.get("REDIS_SENTINELS", ""))
        master = environ.get("REDIS_SENTINEL_MASTER", "").strip()
        url = environ.get("REDIS_URL", "")
        if sentinels and not master:
            raise SentinelConfigError("REDIS_SENTINELS is set: set REDIS_SENTINEL_MASTER to the primary's name too")
        if master and not sentinels:
            raise SentinelConfigError("REDIS_SENTINEL_MASTER is set without REDIS_SENTINELS")
        if sentinels and not url:
            url = f"redis://{quote(master, safe='')}/0"  # the database and password default to none
        return cls(url, sentinels, master, environ.get("REDIS_SENTINEL_PASSWORD", ""))

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def primary_kwargs(self) -> dict:
        """The primary's database, user and password, from REDIS_URL (Sentinel mode)."""
        parts = urlsplit(self.url)
        path = parts.path.strip("/")
        kwargs = {"db": int(path) if path.isdigit() else 0}
        if parts.username:
            kwargs["username"] = unquote(parts.username)
        if parts.password:
            kwargs["password"] = unquote(parts.password)
        return kwargs

    def sentinel_kwargs(self, timeout: float) -> dict:
        # A dead Sentinel must not hold a lookup for long: the next one is asked.
        kwargs = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs


def key_prefix(name: str) -> str:
    """The Redis key prefix of one of Relay's own key spaces (`ledger`, `router`, `respcache`): the
    hash tag keeps each space in one cluster slot, and the xdist worker suffix keeps parallel test
    workers apart (as CACHES' KEY_PREFIX does)."""
    base = os.environ.get("RELAY_CACHE_PREFIX", "relay") + os.environ.get("PYTEST_XDIST_WORKER", "")
    return "{" + base + "}:" + name + ":"


def current() -> Target:
    """The process's target, from Django's settings."""
    from django.conf import settings

    return Target(settings.REDIS_URL, tuple(settings.REDIS_SENTINELS), settings.REDIS_SENTINEL_MASTER,
                  settings.REDIS_SENTINEL_PASSWORD)


# -- clients --------------------------------------------------------------------------------------


def sync_client(target: Target | None = None, **kwargs):
    """A redis.Redis for the target; kwargs are connection options (socket_timeout, decode_responses...)."""
    import redis
    from redis.sentinel import Sentinel

    target = target or current()
    if not target.sentinel:
        return redis.Redis.from_url(target.url, **kwargs)
    lookup = min(kwargs.get("socket_connect_timeout") or 1, 1)
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(lookup))
    return manager.master_for(target.master, **{**target.primary_kwargs(), **kwargs})


def async_client(target: Target | None = None, *, max_connections: int | None = None, pool_timeout: float = 5,
                 **kwargs):
    """A redis.asyncio.Redis for the target, for the running event loop only (its connections
    belong to the loop that made them). With max_connections, a blocking pool: a burst queues
    for a connection (up to pool_timeout) instead of opening hundreds of sockets at once."""
    import redis.asyncio as aioredis

    target = target or current()
    blocking = {} if max_connections is None else {"max_connections": max_connections, "timeout": pool_timeout}
    if not target.sentinel:
        if blocking:
            return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
                target.url, **blocking, **kwargs))
        return aioredis.Redis.from_url(target.url, **kwargs)
    from redis.asyncio.sentinel import Sentinel

    lookup = min(kwargs.get("socket_connect_timeout") or 1, 1)
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(lookup))
    pool_class = _blocking_sentinel_pool() if blocking else None
    extra = {"connection_pool_class": pool_class, **blocking} if blocking else {}
    return manager.master_for(target.master, **extra, **{**target.primary_kwargs(), **kwargs})


_BlockingSentinelPool = None


def _blocking_sentinel_pool():
    """redis.asyncio's Sentinel pool with BlockingConnectionPool's waiting (the MRO puts the
    Sentinel lookup in front of the blocking get_connection)."""
    global _BlockingSentinelPool
    if _BlockingSentinelPool is None:
        from redis.asyncio import BlockingConnectionPool
        from redis.asyncio.sentinel import SentinelConnectionPool

        class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
            pass

        _BlockingSentinelPool = BlockingSentinelPool
    return _BlockingSentinelPool


# -- the configurations of Django's cache, Channels and Celery (used by settings.py) --------------


def cache_location(target: Target) -> tuple[str, dict]:
    """(LOCATION, extra OPTIONS) of the django-redis cache."""
    if not target.sentinel:
        return target.url, {}
    parts = urlsplit(target.url)
    # django-redis's Sentinel factory reads the primary's name from the URL's host.
    netloc = parts.netloc.rpartition("@")[0]
    location = f"redis://{netloc + '@' if netloc else ''}{quote(target.master, safe='')}{parts.path or '/0'}"
    # django-redis's SentinelClient would read from replicas: a session or a rate-limit count
    # written a moment ago could be missing there. The default client on the Sentinel factory
    # reads and writes the primary.
    return location, {
        "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
        "SENTINELS": list(target.sentinels),
        "SENTINEL_KWARGS": target.sentinel_kwargs(1),
    }


def channel_layer_host(target: Target, **kwargs) -> dict:
    """One `hosts` entry of channels-redis's RedisChannelLayer."""
    if not target.sentinel:
        return {"address": target.url, **kwargs}
    return {"sentinels": list(target.sentinels), "master_name": target.master,
            "sentinel_kwargs": target.sentinel_kwargs(1), **target.primary_kwargs(), **kwargs}


def celery_broker(target: Target) -> tuple[str, dict]:
    """(broker URL, broker transport options) for kombu: its `sentinel://` transport."""
    if not target.sentinel:
        return target.url, {}
    primary = target.primary_kwargs()
    auth = ""
    if "password" in primary:
        auth = f"{quote(primary.get('username', ''), safe='')}:{quote(primary['password'], safe='')}@"
    url = ";".join(f"sentinel://{auth}{host}:{port}/{primary['db']}" for host, port in target.sentinels)
    options = {"master_name": target.master}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return url, options

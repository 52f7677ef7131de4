"""The Redis cache backends, with one client per process instead of one per request.

Django keeps a cache backend per async context (asgiref's Local), so under ASGI every request
builds its own django-redis client (a redis.Redis with its callbacks, a connection-pool
lookup) on the event loop the first time it touches the cache: about a tenth of a plain
/v1 request's CPU here. The client is thread-safe and depends only on the backend's settings,
so every backend built from the same settings shares the first one's client. (Under Relay's
ASGI handler the loop's requests now share one backend as well: relay/eventloop/caches.py.)

`replace_if` is the compare-and-set Django's cache API lacks (the API key cache's markers).
"""

from __future__ import annotations

import threading

from django.core.cache import caches
from django_prometheus.cache.backends.redis import RedisCache as MeasuredRedisCache
from django_redis.cache import RedisCache as PlainRedisCache

_clients: dict[str, object] = {}
_lock = threading.Lock()


class _SharedClient:
    @property
    def client(self):
        if self._client is None:
            key = repr((self._server, self._params))
            with _lock:
                if key not in _clients:
                    _clients[key] = self._client_cls(self._server, self._params, self)
            self._client = _clients[key]
        return self._client


class RedisCache(_SharedClient, PlainRedisCache):
    """django-redis's backend."""


class MeasuredCache(_SharedClient, MeasuredRedisCache):
    """django-prometheus's (hit and miss counters) over django-redis's."""


# SET the key to the new value only while it still holds the expected one: one atomic step in Redis.
_REPLACE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_replace_script = None  # redis-py's Script: its SHA is the same for every client it is called with


def replace_if(key: str, expected, value, timeout: float, *, alias: str = "default") -> bool:
    """Put value under key if cache `alias` still holds `expected` there (compare-and-set); True if it did.

    On a backend other than Redis (the in-process cache of `make run`) nothing is written: the
    caller's copy is simply not kept, which is always safe.
    """
    backend = caches[alias]
    if not isinstance(backend, PlainRedisCache):
        return False
    global _replace_script
    client = backend.client.get_client(write=True)
    if _replace_script is None:
        _replace_script = client.register_script(_REPLACE_IF)
    encode = backend.client.encode
    done = _replace_script(keys=[backend.make_key(key)], args=[encode(expected), encode(value), max(1, int(timeout * 1000))],
                  client=client)
    return bool(int(done))

"""The Redis cache backends, with one client per process instead of one per request.

Django keeps a cache backend per async context (asgiref's Local), so under ASGI every request
builds its own django-redis client (a redis.Redis with its callbacks, a connection-pool
lookup) on the event loop the first time it touches the cache: about a tenth of a plain
/v1 request's CPU here. The client is thread-safe and depends only on the backend's settings,
so every backend built from the same settings shares the first one's client. (Under Relay's
ASGI handler the loop's requests now share one backend as well: relay/eventloop/caches.py.)
"""

from __future__ import annotations

import threading

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

"""One cache backend per thread under ASGI, as under WSGI, instead of one per request.

Django keeps its cache backends (`django.core.cache.caches`) in an asgiref Local: per thread in
sync code, but per async context on the event loop, so every request built its own backend
object the first time it touched the cache (a failed lookup in its empty context, then
RedisCache.__init__: options parsed, serializer and compressor imported), about 4% of a plain
/v1 request's CPU. A backend holds settings and a shared client, no request state, and its
calls on the loop never await, so two requests cannot interleave inside one: the loop's
requests can share its thread's backends, as a WSGI thread's successive requests do.
relay/redis_cache.py already shares the client between backends built from the same settings.

Django's own test signal puts a fresh Local back when a test overrides CACHES; that only
restores Django's per-context behaviour for the rest of that process.
"""

from __future__ import annotations

import threading

from django.core.cache import CacheHandler, caches


def share_per_thread(handler: CacheHandler = caches) -> None:
    # BaseConnectionHandler keeps its backends as attributes of `_connections` (get/set/delattr),
    # which a threading.local serves: tests/test_eventloop_internals.py holds Django to that.
    handler._connections = threading.local()

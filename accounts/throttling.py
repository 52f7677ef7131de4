"""Per-key request rate limits: a sliding minute per key, shared by the keys minted through it.

A request made with a key counts against that key's requests/minute and against each of its
ancestors' (accounts/key_tree.py), so the keys under a key together stay within the key's rate:
minting children does not multiply it. The check and the counting are one atomic step over all
those counters (a request is counted everywhere or nowhere): one Lua script on the shared Redis
cache in production, a lock over the in-process cache when embedded.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from accounts.key_tree import chain
from accounts.permissions import request_key

WINDOW_SECONDS = 60

# ARGV: now, window, member, n, then n pairs (key, limit): one sorted set of request times per key.
_SLIDING_MINUTE = """
local now, window, member, n = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local wait, remaining = 0, nil
for i = 0, n - 1 do
  local key, limit = ARGV[5 + 2 * i], tonumber(ARGV[6 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local freed = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(freed[2]) + window - now)
  elseif remaining == nil or limit - count - 1 < remaining then
    remaining = limit - count - 1
  end
end
if wait > 0 then return {0, tostring(wait)} end
for i = 0, n - 1 do
  redis.call('ZADD', ARGV[5 + 2 * i], now, member)
  redis.call('EXPIRE', ARGV[5 + 2 * i], window + 1)
end
return {1, tostring(remaining)}
"""
_script = None
_local_lock = threading.Lock()


def _counter(key_id: int) -> str:
    # The hash tag keeps a family's counters in one cluster slot, as one script must.
    return f"{{rpm}}:{key_id}"


def count_request(limits: list[tuple[int, int]], now: float | None = None) -> tuple[bool, float, int]:
    """Count one request against every (key id, requests/minute) given, or refuse it.

    Returns (allowed, seconds until it would be allowed, requests left in the tightest minute).
    """
    now = time.time() if now is None else now
    if settings.REDIS_URL:
        return _count_redis(limits, now)
    return _count_local(limits, now)


def _count_redis(limits, now: float) -> tuple[bool, float, int]:
    global _script
    client = cache.client.get_client(write=True)
    if _script is None:
        _script = client.register_script(_SLIDING_MINUTE)
    return _verdict(_script(args=_script_args(limits, now), client=client))


async def count_request_on_loop(limits: list[tuple[int, int]], now: float | None = None) -> tuple[bool, float, int]:
    """count_request on the event loop, with the same script and counters (the cache is Redis)."""
    from relay.eventloop.caches import run_script_on_loop

    now = time.time() if now is None else now
    return _verdict(await run_script_on_loop(_SLIDING_MINUTE, _script_args(limits, now)))


def _script_args(limits, now: float) -> list:
    args = [repr(now), WINDOW_SECONDS, uuid.uuid4().hex, len(limits)]
    for key_id, limit in limits:
        args += [cache.make_key(_counter(key_id)), limit]
    return args


def _verdict(reply) -> tuple[bool, float, int]:
    allowed, figure = reply
    figure = float(figure)
    return (True, 0.0, int(figure)) if int(allowed) else (False, figure, 0)


def limits_of(key) -> list[tuple[int, int]]:
    """(key id, requests/minute) of the key and of every key above it that has a limit."""
    return [(k.pk, k.requests_per_minute) for k in chain(key) if k.requests_per_minute]


def _count_local(limits, now: float) -> tuple[bool, float, int]:
    with _local_lock:
        histories = {key_id: sorted(t for t in cache.get(_counter(key_id), []) if t > now - WINDOW_SECONDS)
                     for key_id, _limit in limits}
        wait = max((histories[key_id][len(histories[key_id]) - limit] + WINDOW_SECONDS - now
                    for key_id, limit in limits if len(histories[key_id]) >= limit), default=0.0)
        if wait > 0:
            return False, wait, 0
        for key_id, _limit in limits:
            cache.set(_counter(key_id), [*histories[key_id], now], WINDOW_SECONDS + 1)
        return True, 0.0, min(limit - len(histories[key_id]) - 1 for key_id, limit in limits)


def wait_seconds(wait: float) -> int:
    """The Retry-After of a refusal: whole seconds, at least one."""
    return max(1, math.ceil(wait))


class APIKeyRateThrottle(BaseThrottle):
    """Applies the requests/minute of a request's key and of every key above it."""

    def __init__(self):
        self._wait = None

    def allow_request(self, request, view):
        key = request_key(request)
        if key is None:
            return True
        limits = limits_of(key)
        if not limits:
            return True
        allowed, wait, remaining = count_request(limits)
        if not allowed:
            self._wait = wait_seconds(wait)
            return False
        # For the X-RateLimit-Remaining-Requests header of the model-call responses (billing.ratelimit).
        request._request.rate_limit_remaining_requests = remaining
        return True

    def wait(self):
        return self._wait


class LoginRateThrottle(SimpleRateThrottle):
    """Throttles credential guessing per client address and per username."""

    scope = "login"

    def get_cache_key(self, request, view):
        from relay.http import client_ip

        return self.cache_format % {"scope": self.scope, "ident": client_ip(request.META) or "unknown"}

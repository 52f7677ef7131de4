"""Per-key token rate limits (tokens/minute): a token bucket on the ledger's store.

A request draws from its key's bucket and from the bucket of every key above it
(accounts/key_tree.py), all or none in one step: the keys minted through a key share its minute.
Redis in production (one Lua script, shared by every instance), in-process when embedded.
`consume_tokens` answers (allowed, retry_after_s, remaining); the API turns a refusal into
429 `rate_limited` with Retry-After and X-RateLimit-Remaining-Tokens.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from billing.ledger import key_prefix

# ARGV: now, n, then n groups (key, capacity, refill per second, tokens): takes the tokens from
# every bucket or from none. A bucket starts full; its state is kept a little longer than it
# takes to refill. Returns {allowed, level of each bucket}.
_BUCKETS = """
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local levels, allowed = {}, 1
for i = 0, n - 1 do
  local key, cap, rate, want = ARGV[3 + 4 * i], tonumber(ARGV[4 + 4 * i]), tonumber(ARGV[5 + 4 * i]), tonumber(ARGV[6 + 4 * i])
  local state = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(state[1]) or cap, tonumber(state[2]) or now
  levels[i + 1] = math.min(cap, level + math.max(0, now - ts) * rate)
  if want > levels[i + 1] then allowed = 0 end
end
local out = {allowed}
for i = 0, n - 1 do
  local key, cap, rate, want = ARGV[3 + 4 * i], tonumber(ARGV[4 + 4 * i]), tonumber(ARGV[5 + 4 * i]), tonumber(ARGV[6 + 4 * i])
  local level = levels[i + 1]
  if allowed == 1 then level = level - want end
  redis.call('HSET', key, 'level', tostring(level), 'ts', tostring(now))
  redis.call('EXPIRE', key, math.ceil(cap / rate) + 60)
  out[i + 2] = tostring(level)
end
return out
"""

_local_lock = threading.Lock()
_local_buckets: dict[str, tuple[float, float]] = {}


@dataclass
class Bucket:
    """One tokens/minute bucket a request draws from: `want` tokens of `key_id`'s `limit_per_min`."""

    key_id: int
    want: int
    limit_per_min: int

    @property
    def capacity(self) -> float:
        return float(self.limit_per_min)

    @property
    def rate(self) -> float:
        return self.limit_per_min / 60.0


def _buckets_local(names: list[str], buckets: list[Bucket], now: float) -> tuple[bool, list[float]]:
    with _local_lock:
        levels = []
        for name, bucket in zip(names, buckets, strict=True):
            level, ts = _local_buckets.get(name, (bucket.capacity, now))
            levels.append(min(bucket.capacity, level + max(0.0, now - ts) * bucket.rate))
        allowed = all(b.want <= level for b, level in zip(buckets, levels, strict=True))
        if allowed:
            levels = [level - b.want for b, level in zip(buckets, levels, strict=True)]
        for name, level in zip(names, levels, strict=True):
            _local_buckets[name] = (level, now)
        return allowed, levels


async def consume_buckets(buckets: list[Bucket], *, now: float | None = None):
    """Take each bucket's tokens from it, from all of them or (refused) from none.

    Returns (allowed, retry_after_s, remaining, refusing): remaining is the fewest tokens left
    in any bucket; refusing the first bucket that refused (None when allowed). A request larger
    than a bucket's whole limit can never pass it: retry_after_s 60 (the client must send less).
    Raises LedgerUnavailable when Redis cannot be reached.
    """
    now = time.time() if now is None else now
    names = [f"{key_prefix()}tpm:{bucket.key_id}" for bucket in buckets]
    buckets = [Bucket(b.key_id, max(0, int(b.want)), b.limit_per_min) for b in buckets]
    if settings.REDIS_URL:
        allowed, levels = await _buckets_redis(names, buckets, now)
    else:
        allowed, levels = _buckets_local(names, buckets, now)
    remaining = int(min(levels))
    if allowed:
        return True, 0, remaining, None
    waits = [(60 if b.want > b.capacity else max(1, math.ceil((b.want - level) / b.rate)), b)
             for b, level in zip(buckets, levels, strict=True) if b.want > level]
    wait, refusing = max(waits, key=lambda pair: pair[0])
    return False, wait, remaining, refusing


async def consume_tokens(key_id, tokens: int, limit_per_min: int | None, *, now: float | None = None):
    """Take `tokens` from the key's bucket of `limit_per_min` tokens refilled over a minute.

    Returns (allowed, retry_after_s, remaining). retry_after_s is 0 when allowed; a request larger
    than the whole limit can never pass and gets retry_after_s 60 (the client must send less).
    No limit (None/0) always passes. Raises LedgerUnavailable when Redis cannot be reached.
    """
    if not limit_per_min:
        return True, 0, None
    allowed, retry_after, remaining, _refusing = await consume_buckets([Bucket(key_id, tokens, limit_per_min)],
                                                                       now=now)
    return allowed, retry_after, remaining


_backend = None


async def _buckets_redis(names: list[str], buckets: list[Bucket], now: float) -> tuple[bool, list[float]]:
    global _backend
    from billing.ledger_redis import RedisBackend

    if _backend is None:
        from relay import redis_clients

        _backend = RedisBackend(redis_clients.current())
    args = [repr(float(now)), len(buckets)]
    for name, bucket in zip(names, buckets, strict=True):
        args += [name, repr(bucket.capacity), repr(bucket.rate), bucket.want]
    allowed, *levels = await _backend.run(_BUCKETS, *args)
    return bool(int(allowed)), [float(level) for level in levels]


async def admit(api_key, input_tokens: int, max_output_tokens: int) -> int | None:
    """Take a request's tokens from the tokens/minute bucket of its key and of every key above it
    (a key minted through a key shares that key's minute); the fewest tokens left, or None (no limit).

    Like OpenAI, a request counts its input plus the most it may generate. A request that could
    use more than a whole minute's allowance needs a full bucket (it is not refused forever);
    one whose input alone is larger never passes. Raises RateLimitedError (429, Retry-After)
    or LedgerUnavailableError (503: the limit cannot be checked).
    """
    from accounts.key_tree import achain
    from billing.api.errors import LedgerUnavailableError, RateLimitedError
    from billing.ledger import LedgerUnavailable

    if api_key is None:
        return None
    limited = [key for key in await achain(api_key) if key.tokens_per_minute]
    if not limited:
        return None
    wanted = input_tokens + max_output_tokens
    buckets = [Bucket(key.pk, min(wanted, key.tokens_per_minute) if input_tokens <= key.tokens_per_minute else wanted,
                      key.tokens_per_minute) for key in limited]
    try:
        allowed, retry_after, remaining, refusing = await consume_buckets(buckets)
    except LedgerUnavailable:
        raise LedgerUnavailableError() from None
    if not allowed:
        raise RateLimitedError(wait=retry_after, detail=_refusal(refusing, input_tokens, api_key))
    return remaining


def _refusal(bucket: Bucket, input_tokens: int, api_key) -> str:
    limit = f"limit of {bucket.limit_per_min} tokens per minute"
    limit = f"this API key's {limit}" if bucket.key_id == api_key.pk else f"the {limit} of the key this key was made from"
    if input_tokens > bucket.limit_per_min:
        return f"The request's {input_tokens} input tokens exceed {limit}."
    return f"{limit[0].upper()}{limit[1:]} is used up."


def quota_headers(response, django_request, remaining_tokens: int | None):
    """X-RateLimit-Remaining-Requests/-Tokens on a model-call response, for keys with those limits."""
    remaining_requests = getattr(django_request, "rate_limit_remaining_requests", None)
    if remaining_requests is not None:
        response["X-RateLimit-Remaining-Requests"] = str(max(0, remaining_requests))
    if remaining_tokens is not None:
        response["X-RateLimit-Remaining-Tokens"] = str(max(0, remaining_tokens))
    return response

"""Per-key token rate limits (tokens/minute): a token bucket on the ledger's store.

Redis in production (one Lua script, shared by every instance), in-process when embedded.
`consume_tokens` answers (allowed, retry_after_s, remaining); the API turns a refusal into
429 `rate_limited` with Retry-After and X-RateLimit-Remaining-Tokens.
"""

from __future__ import annotations

import math
import threading
import time

from django.conf import settings

from billing.ledger import key_prefix

# ARGV: key, capacity, refill per second, tokens, now. The bucket starts full; state is kept a
# little longer than it takes to refill.
_BUCKET = """
local key, cap, rate = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local want, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', key, 'level', 'ts')
local level, ts = tonumber(state[1]) or cap, tonumber(state[2]) or now
level = math.min(cap, level + math.max(0, now - ts) * rate)
local allowed = 0
if want <= level then level = level - want; allowed = 1 end
redis.call('HSET', key, 'level', tostring(level), 'ts', tostring(now))
redis.call('EXPIRE', key, math.ceil(cap / rate) + 60)
return {allowed, tostring(level)}
"""

_local_lock = threading.Lock()
_local_buckets: dict[str, tuple[float, float]] = {}


def _bucket_local(key: str, capacity: float, rate: float, want: int, now: float) -> tuple[bool, float]:
    with _local_lock:
        level, ts = _local_buckets.get(key, (capacity, now))
        level = min(capacity, level + max(0.0, now - ts) * rate)
        allowed = want <= level
        if allowed:
            level -= want
        _local_buckets[key] = (level, now)
        return allowed, level


async def consume_tokens(key_id, tokens: int, limit_per_min: int | None, *, now: float | None = None):
    """Take `tokens` from the key's bucket of `limit_per_min` tokens refilled over a minute.

    Returns (allowed, retry_after_s, remaining). retry_after_s is 0 when allowed; a request larger
    than the whole limit can never pass and gets retry_after_s 60 (the client must send less).
    No limit (None/0) always passes. Raises LedgerUnavailable when Redis cannot be reached.
    """
    if not limit_per_min:
        return True, 0, None
    now = time.time() if now is None else now
    capacity, rate, want = float(limit_per_min), limit_per_min / 60.0, max(0, int(tokens))
    key = f"{key_prefix()}tpm:{key_id}"
    if settings.REDIS_URL:
        allowed, level = await _bucket_redis(key, capacity, rate, want, now)
    else:
        allowed, level = _bucket_local(key, capacity, rate, want, now)
    if allowed:
        return True, 0, int(level)
    if want > capacity:
        return False, 60, int(level)
    return False, max(1, math.ceil((want - level) / rate)), int(level)


_backend = None


async def _bucket_redis(key, capacity, rate, want, now) -> tuple[bool, float]:
    global _backend
    from billing.ledger_redis import RedisBackend

    if _backend is None:
        _backend = RedisBackend(settings.REDIS_URL)
    allowed, level = await _backend.run(_BUCKET, key, repr(capacity), repr(rate), want, repr(float(now)))
    return bool(int(allowed)), float(level)


async def admit(api_key, input_tokens: int, max_output_tokens: int) -> int | None:
    """Take a request's tokens from its key's tokens/minute bucket; the tokens left, or None (no limit).

    Like OpenAI, a request counts its input plus the most it may generate. A request that could
    use more than a whole minute's allowance needs a full bucket (it is not refused forever);
    one whose input alone is larger never passes. Raises RateLimitedError (429, Retry-After)
    or LedgerUnavailableError (503: the limit cannot be checked).
    """
    from billing.api.errors import LedgerUnavailableError, RateLimitedError
    from billing.ledger import LedgerUnavailable

    limit = getattr(api_key, "tokens_per_minute", None)
    if api_key is None or not limit:
        return None
    want = input_tokens + max_output_tokens
    if want > limit >= input_tokens:
        want = limit
    try:
        allowed, retry_after, remaining = await consume_tokens(api_key.pk, want, limit)
    except LedgerUnavailable:
        raise LedgerUnavailableError() from None
    if not allowed:
        raise RateLimitedError(
            wait=retry_after,
            detail=f"This API key's limit of {limit} tokens per minute is used up."
            if input_tokens <= limit else
            f"The request's {input_tokens} input tokens exceed this API key's limit of {limit} tokens per minute.")
    return remaining


def quota_headers(response, django_request, remaining_tokens: int | None):
    """X-RateLimit-Remaining-Requests/-Tokens on a model-call response, for keys with those limits."""
    remaining_requests = getattr(django_request, "rate_limit_remaining_requests", None)
    if remaining_requests is not None:
        response["X-RateLimit-Remaining-Requests"] = str(max(0, remaining_requests))
    if remaining_tokens is not None:
        response["X-RateLimit-Remaining-Tokens"] = str(max(0, remaining_tokens))
    return response

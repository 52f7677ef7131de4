"""The router's state in Redis: each call is one Lua script, atomic across instances, in one round
trip that the other script calls of the same turn of the loop share (relay.redis_scripts).

Keys (P = agents.router.state.key_prefix(), k = a deployment's key): P h:k hash (open: cooldown
until, since: opened at, probe: probe claim until, pl: the probe's lease, ttft: moving average),
P l:k sorted set of leases scored by expiry, P f:k sorted set of failures scored by time, P m:k:<minute>
hash of that minute's requests (r) and tokens (t). Times are the caller's clock, passed in (never
Redis TIME). Expiries set with EXPIRE are only garbage collection, never part of a rule.
The rules are agents.router.state_base's; the Lua here mirrors InProcessState line for line.
"""

from __future__ import annotations

import asyncio
import weakref

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agents.router.state_base import (
    MAX_COOLDOWN,
    MINUTE_KEEP_SECONDS,
    TTFT_ALPHA,
    Acquired,
    RouterState,
    StateUnavailable,
    Transition,
    state_name,
)
from relay import redis_clients, redis_scripts

# ARGV: prefix, now, ttl, lease, tokens, rand, strategy, probe ttl, keep, then per deployment:
# key, weight, priority, rpm limit, tpm limit ('' = none). Returns {key, probe 0|1, ''} or
# {'', reason, soonest}.
ACQUIRE = """
local P, now, ttl, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local tokens, rand, strategy = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local probe_ttl, keep = tonumber(ARGV[8]), tonumber(ARGV[9])
local minute = string.format('%d', math.floor(now / 60))
local usable, probes, limited, soonest = {}, {}, false, nil
local function later(wait) if soonest == nil or wait < soonest then soonest = wait end end
for i = 10, #ARGV, 5 do
  local key = ARGV[i]
  local b = redis.call('HMGET', P .. 'h:' .. key, 'open', 'probe', 'ttft')
  local open_until, skip, probe = tonumber(b[1] or '0'), false, false
  if open_until > 0 then
    local wait = open_until - now
    if now >= open_until then wait = tonumber(b[2] or '0') - now end
    if wait > 0 then later(wait); skip = true else probe = true end
  end
  local rpm, tpm = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  if not skip and (rpm or tpm) then
    local counts = redis.call('HMGET', P .. 'm:' .. key .. ':' .. minute, 'r', 't')
    local r, t = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
    if (rpm and r + 1 > rpm) or (tpm and t + tokens > tpm) then
      limited = true; later((tonumber(minute) + 1) * 60 - now); skip = true
    end
  end
  if not skip then
    local lk = P .. 'l:' .. key
    redis.call('ZREMRANGEBYSCORE', lk, '-inf', ARGV[2])
    local row = {key = key, weight = tonumber(ARGV[i + 1]), priority = tonumber(ARGV[i + 2]),
                 busy = redis.call('ZCARD', lk), ttft = tonumber(b[3] or '0'), probe = probe, limits = rpm or tpm}
    if probe then table.insert(probes, row) else table.insert(usable, row) end
  end
end
if #probes > 0 then usable = probes end
if #usable == 0 then
  local reason, wait = 'cooldown', ''
  if limited then reason = 'limits' end
  if soonest then wait = tostring(soonest) end
  return {'', reason, wait}
end
local function weighted(list)
  local total = 0
  for _, c in ipairs(list) do total = total + c.weight end
  local left = rand * total
  for _, c in ipairs(list) do
    left = left - c.weight
    if left < 0 then return c end
  end
  return list[#list]
end
local function choose(list)
  if strategy == 'weighted_random' then return weighted(list) end
  local field = 'busy'
  if strategy == 'priority' then field = 'priority' elseif strategy == 'lowest_latency' then field = 'ttft' end
  local best = nil
  for _, c in ipairs(list) do if best == nil or c[field] < best then best = c[field] end end
  local tied = {}
  for _, c in ipairs(list) do if c[field] == best then table.insert(tied, c) end end
  if strategy == 'priority' then return weighted(tied) end
  return tied[math.min(math.floor(rand * #tied), #tied - 1) + 1]
end
local c = choose(usable)
redis.call('ZADD', P .. 'l:' .. c.key, tostring(now + ttl), lease)
if c.limits then
  local mk = P .. 'm:' .. c.key .. ':' .. minute
  redis.call('HINCRBY', mk, 'r', 1)
  if tokens > 0 then redis.call('HINCRBY', mk, 't', tokens) end
  redis.call('EXPIRE', mk, keep)
end
if c.probe then
  redis.call('HSET', P .. 'h:' .. c.key, 'probe', tostring(now + probe_ttl), 'pl', lease)
  return {c.key, '1', ''}
end
return {c.key, '0', ''}
"""

# ARGV: prefix, key, lease, now, outcome, ttft, tokens, retry after ('' = none), allowed fails,
# window, cooldown, alpha, count tokens 0|1, keep, max cooldown, the minute and tokens the acquire
# counted to give back ('' = none: the attempt was sent). Returns {} or {'entered'|'left', reason, seconds}.
RELEASE = """
local P, key, lease, now, outcome = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ttft, tokens, retry_after = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local allowed, window, cooldown = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local alpha, keep, max_cd = tonumber(ARGV[12]), tonumber(ARGV[14]), tonumber(ARGV[15])
local h, fk = P .. 'h:' .. key, P .. 'f:' .. key
redis.call('ZREM', P .. 'l:' .. key, lease)
if ARGV[13] == '1' and tokens > 0 then
  local mk = P .. 'm:' .. key .. ':' .. string.format('%d', math.floor(now / 60))
  redis.call('HINCRBY', mk, 't', tokens)
  redis.call('EXPIRE', mk, keep)
end
if ARGV[16] ~= '' then
  local mk, given = P .. 'm:' .. key .. ':' .. ARGV[16], tonumber(ARGV[17])
  if redis.call('EXISTS', mk) == 1 then
    if redis.call('HINCRBY', mk, 'r', -1) < 0 then redis.call('HSET', mk, 'r', 0) end
    if given > 0 and redis.call('HINCRBY', mk, 't', -given) < 0 then redis.call('HSET', mk, 't', 0) end
  end
end
local b = redis.call('HMGET', h, 'open', 'since', 'pl', 'ttft')
local open_until = tonumber(b[1] or '0')
local was_probe = lease ~= '' and b[3] == lease
if was_probe then redis.call('HDEL', h, 'probe', 'pl') end
local function bounded(seconds)
  if seconds < 0 then return 0 end
  if seconds > max_cd then return max_cd end
  return seconds
end
local function open(seconds, reason)
  redis.call('HSET', h, 'open', tostring(now + seconds), 'since', ARGV[4])
  redis.call('HDEL', h, 'probe', 'pl')
  redis.call('DEL', fk)
  return {'entered', reason, tostring(seconds)}
end
if outcome == 'success' then
  if ttft then
    local avg = tonumber(b[4])
    if avg then avg = avg + alpha * (ttft - avg) else avg = ttft end
    redis.call('HSET', h, 'ttft', tostring(avg))
  end
  if open_until > 0 then
    redis.call('HDEL', h, 'open', 'since', 'probe', 'pl')
    redis.call('DEL', fk)
    local reason = 'success'
    if was_probe then reason = 'probe_succeeded' end
    return {'left', reason, tostring(now - tonumber(b[2] or ARGV[4]))}
  end
  return {}
end
if outcome ~= 'failure' then return {} end
if open_until > 0 then
  if was_probe then
    if retry_after then return open(bounded(retry_after), 'probe_failed') end
    return open(cooldown, 'probe_failed')
  end
  if retry_after and now < open_until and now + bounded(retry_after) > open_until then
    redis.call('HSET', h, 'open', tostring(now + bounded(retry_after)))
  end
  return {}
end
redis.call('ZADD', fk, ARGV[4], lease)
redis.call('ZREMRANGEBYSCORE', fk, '-inf', tostring(now - window))
if retry_after then return open(bounded(retry_after), 'retry_after') end
if redis.call('ZCARD', fk) >= math.max(allowed, 1) then return open(cooldown, 'failures') end
redis.call('EXPIRE', fk, math.ceil(window) + keep)
return {}
"""

# ARGV: prefix, now, expiry, then key/lease pairs. Only leases still live are moved.
RENEW = """
local P, now, expiry = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for i = 4, #ARGV, 2 do
  local lk = P .. 'l:' .. ARGV[i]
  local score = redis.call('ZSCORE', lk, ARGV[i + 1])
  if score and tonumber(score) > now then redis.call('ZADD', lk, expiry, ARGV[i + 1]) end
end
return 0
"""

# Read-only. ARGV: prefix, now, keys... Returns {in flight, open until, ttft, ...} per key.
SNAPSHOT = """
local P, now, out = ARGV[1], ARGV[2], {}
for i = 3, #ARGV do
  local b = redis.call('HMGET', P .. 'h:' .. ARGV[i], 'open', 'ttft')
  table.insert(out, redis.call('ZCOUNT', P .. 'l:' .. ARGV[i], '(' .. now, '+inf'))
  table.insert(out, b[1] or '')
  table.insert(out, b[2] or '')
end
return out
"""


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class _Clients:
    """One asyncio client per event loop (redis.asyncio connections belong to the loop that made
    them), one sync client for snapshots (metrics scrapes and the admin run in threads). Short
    timeouts: routing waits a moment for Redis, then goes on without it."""

    def __init__(self, target: redis_clients.Target | str):
        self.target = redis_clients.Target(target) if isinstance(target, str) else target
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> ScriptRunner
        self._sync: redis.Redis | None = None
        self._sync_scripts: dict = {}

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = self._async[loop] = redis_clients.async_client(
                self.target, max_connections=64, pool_timeout=2, socket_connect_timeout=0.5, socket_timeout=1,
                decode_responses=True)
        return client

    async def run(self, script: str, *args):
        try:
            # EVALSHA, with the calls of one turn of the loop in one trip (relay.redis_scripts).
            loop = asyncio.get_running_loop()
            runner = self._runners.get(loop)
            if runner is None:
                runner = self._runners[loop] = redis_scripts.ScriptRunner(self._client())
            return await runner.run(script, args)
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"the routing state (Redis) is unreachable: {error}") from error

    def sync_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis_clients.sync_client(self.target, socket_connect_timeout=0.5, socket_timeout=0.5,
                                                   decode_responses=True)
        return self._sync

    def run_sync(self, script: str, *args):
        try:
            client = self.sync_client()
            registered = self._sync_scripts.get(script)
            if registered is None:
                registered = self._sync_scripts[script] = client.register_script(script)
            return registered(args=args)
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"the routing state (Redis) is unreachable: {error}") from error


class RedisState(RouterState):
    def __init__(self, target: redis_clients.Target | str, prefix: str):
        self.clients = _Clients(target)
        self.prefix = prefix

    async def acquire(self, candidates, *, strategy, lease, now, ttl, tokens, rand, probe_ttl):
        rows = [str(part) for c in candidates
                for part in (c.key, int(c.weight), int(c.priority), "" if c.rpm_limit is None else int(c.rpm_limit),
                             "" if c.tpm_limit is None else int(c.tpm_limit))]
        key, second, third = await self.clients.run(
            ACQUIRE, self.prefix, _num(now), _num(ttl), lease, int(tokens), _num(rand), strategy, _num(probe_ttl),
            MINUTE_KEEP_SECONDS, *rows)
        if not key:
            return Acquired(None, reason=second, retry_after=float(third) if third else None)
        return Acquired(key, probe=second == "1")

    async def release(self, key, lease, *, outcome, now, breaker, ttft=None, tokens=0, retry_after=None,
                      count_tokens=False, uncount=None):
        minute, given = ("", 0) if uncount is None else (int(uncount[0]), max(0, int(uncount[1])))
        out = await self.clients.run(
            RELEASE, self.prefix, key, lease, _num(now), outcome, _num(ttft), max(0, int(tokens)), _num(retry_after),
            int(breaker.allowed_fails), _num(breaker.failure_window), _num(breaker.cooldown), _num(TTFT_ALPHA),
            "1" if count_tokens else "0", MINUTE_KEEP_SECONDS, _num(MAX_COOLDOWN), minute, given)
        if not out:
            return None
        return Transition(out[0] == "entered", out[1], float(out[2]))

    async def renew(self, leases, *, now, expiry):
        if leases:
            await self.clients.run(RENEW, self.prefix, _num(now), _num(expiry),
                                   *[part for pair in leases for part in pair])

    def snapshot(self, keys, now):
        if not keys:
            return []
        out = self.clients.run_sync(SNAPSHOT, self.prefix, _num(now), *keys)
        rows = []
        for i, key in enumerate(keys):
            in_flight, open_until, ttft = out[3 * i: 3 * i + 3]
            open_until = float(open_until) if open_until else 0.0
            rows.append({"key": key, "in_flight": int(in_flight), "state": state_name(open_until, now),
                         "cooldown_until": open_until or None, "ttft_avg": float(ttft) if ttft else None})
        return rows

    def clear(self) -> None:
        """Delete every key under this state's prefix (tests)."""
        client = self.clients.sync_client()
        pattern = self.prefix.replace("{", "\\{").replace("}", "\\}") + "*"
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)

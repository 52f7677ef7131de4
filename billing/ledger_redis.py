"""The Redis ledger: each operation is one Lua script, so it is atomic across instances.

Keys (P = billing.ledger.key_prefix()): P s:<scope> spent, P r:<scope> reserved, P d:<scope>
sorted set of reservation deadlines, P q:<request id> the reservation (amt, st, sc) and, once a run
settled with its closing record, that record (cl) and what the settle charged (ch); P c the sorted
set of the held closing records' request ids by the time they were stored. Lua numbers
are doubles, exact for integers below 2**53 nano-dollars: amounts cross the script boundary as
strings and limits are capped well below that (billing.money.MAX_LIMIT_USD).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from billing.ledger_base import RETENTION_SECONDS, Grant, HeldClosing, Ledger, LedgerUnavailable, OpenReservation
from relay import redis_clients, redis_scripts

logger = logging.getLogger(__name__)

# How long a primary found without replicas is believed alone (its writes are not waited for).
ALONE_SECONDS = 1.0

# Purges the scope's expired reservations: returns their amount to every scope they hold.
_PURGE = """
local function purge(P, scope, now, retention)
  local dkey = P .. 'd:' .. scope
  local stale = redis.call('ZRANGEBYSCORE', dkey, '-inf', now)
  for _, rid in ipairs(stale) do
    local qkey = P .. 'q:' .. rid
    local st = redis.call('HGET', qkey, 'st')
    if st == 'r' then
      local amt = redis.call('HGET', qkey, 'amt')
      for s in string.gmatch(redis.call('HGET', qkey, 'sc'), '[^\\n]+') do
        redis.call('DECRBY', P .. 'r:' .. s, amt)
        redis.call('ZREM', P .. 'd:' .. s, rid)
      end
      redis.call('HSET', qkey, 'st', 'x')
      redis.call('EXPIRE', qkey, retention)
    else
      redis.call('ZREM', dkey, rid)
    end
  end
end
"""

# ARGV: prefix, request id, now, ttl, min, max, retention, then scope/limit pairs.
# Returns {granted 0|1|2 (2: counters missing), amount, denied scope, its spent, tightest scope,
# missing scopes...}.
RESERVE = _PURGE + """
local P, rid, now, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local minn, maxn, retention = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local qkey = P .. 'q:' .. rid
if redis.call('HGET', qkey, 'st') == 'r' then
  return {1, redis.call('HGET', qkey, 'amt'), '', '0', ''}
end
local missing = {}
for i = 8, #ARGV, 2 do
  if redis.call('EXISTS', P .. 's:' .. ARGV[i]) == 0 then table.insert(missing, ARGV[i]) end
end
if #missing > 0 then
  return {2, '0', '', '0', '', unpack(missing)}
end
local scopes, room, tightest = {}, nil, ''
for i = 8, #ARGV, 2 do
  local scope, limit = ARGV[i], tonumber(ARGV[i + 1])
  purge(P, scope, now, retention)
  local spent = redis.call('GET', P .. 's:' .. scope) or '0'
  local left = limit - tonumber(spent) - tonumber(redis.call('GET', P .. 'r:' .. scope) or '0')
  if left < minn then
    return {0, '0', scope, spent, ''}
  end
  if room == nil or left < room then room, tightest = left, scope end
  table.insert(scopes, scope)
end
local amount = maxn
if room ~= nil and room < amount then amount = room end
amount = string.format('%.0f', amount)
local deadline = tonumber(now) + ttl
for _, scope in ipairs(scopes) do
  redis.call('INCRBY', P .. 'r:' .. scope, amount)
  redis.call('ZADD', P .. 'd:' .. scope, deadline, rid)
end
redis.call('HSET', qkey, 'amt', amount, 'st', 'r', 'sc', table.concat(scopes, '\\n'))
redis.call('EXPIRE', qkey, math.ceil(ttl) + tonumber(retention))
return {1, amount, '', '0', tightest}
"""

# Grows a live reservation. ARGV: prefix, request id, now, min, max, retention, then scope/limit
# pairs (the reservation's). Returns like RESERVE: {granted 0|1|2 (2: the reservation is not live,
# or a counter is missing), amount added, denied scope, its spent, tightest scope}.
EXTEND = _PURGE + """
local P, rid, now = ARGV[1], ARGV[2], ARGV[3]
local minn, maxn, retention = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local qkey = P .. 'q:' .. rid
for i = 7, #ARGV, 2 do purge(P, ARGV[i], now, retention) end
if redis.call('HGET', qkey, 'st') ~= 'r' then return {2, '0', '', '0', ''} end
local room, tightest = nil, ''
for i = 7, #ARGV, 2 do
  local scope, limit = ARGV[i], tonumber(ARGV[i + 1])
  local spent = redis.call('GET', P .. 's:' .. scope)
  if not spent then return {2, '0', '', '0', ''} end
  local left = limit - tonumber(spent) - tonumber(redis.call('GET', P .. 'r:' .. scope) or '0')
  if left < minn then return {0, '0', scope, spent, ''} end
  if room == nil or left < room then room, tightest = left, scope end
end
local amount = maxn
if room ~= nil and room < amount then amount = room end
if amount < 0 then amount = 0 end
amount = string.format('%.0f', amount)
for i = 7, #ARGV, 2 do redis.call('INCRBY', P .. 'r:' .. ARGV[i], amount) end
redis.call('HINCRBY', qkey, 'amt', amount)
return {1, amount, '', '0', tightest}
"""

# Moves the reservation to spent at `actual` (capped at the grant); returns {scope, spent, ...} and
# what it charged ({} and nil when there is nothing to settle).
_SETTLE = """
local function settle(P, rid, actual, retention)
  local qkey = P .. 'q:' .. rid
  local st = redis.call('HGET', qkey, 'st')
  if not st or st == 's' then return {}, nil end
  local amt = redis.call('HGET', qkey, 'amt')
  if tonumber(actual) > tonumber(amt) then actual = amt end
  local out = {}
  for s in string.gmatch(redis.call('HGET', qkey, 'sc'), '[^\\n]+') do
    if st == 'r' then
      redis.call('DECRBY', P .. 'r:' .. s, amt)
      redis.call('ZREM', P .. 'd:' .. s, rid)
    end
    table.insert(out, s)
    table.insert(out, redis.call('INCRBY', P .. 's:' .. s, actual))
  end
  redis.call('HSET', qkey, 'st', 's')
  redis.call('EXPIRE', qkey, retention)
  return out, actual
end
"""

# ARGV: prefix, request id, actual, retention. Returns {scope, spent, scope, spent, ...}.
SETTLE = _SETTLE + """
local out = settle(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return out
"""

# The settle and the run's closing record in one step. ARGV: prefix, request id, actual, retention,
# now, closing JSON. Returns {scope, spent, ...} like SETTLE. A record nobody forgot is dropped from
# the index after `retention` (its hash expires by itself).
SETTLE_CLOSING = _SETTLE + """
local P, rid, retention, now = ARGV[1], ARGV[2], ARGV[4], tonumber(ARGV[5])
local out, charged = settle(P, rid, ARGV[3], retention)
local qkey = P .. 'q:' .. rid
redis.call('HSET', qkey, 'cl', ARGV[6])
if charged then
  redis.call('HSET', qkey, 'ch', charged)
else
  redis.call('HSETNX', qkey, 'ch', '0')
end
redis.call('EXPIRE', qkey, retention)
redis.call('ZADD', P .. 'c', now, rid)
redis.call('ZREMRANGEBYSCORE', P .. 'c', '-inf', now - tonumber(retention))
return out
"""

# ARGV: prefix, then request ids (none: every held record). Returns {request id, closing, charged,
# scopes, ...} of the records still held.
HELD_CLOSINGS = """
local P = ARGV[1]
local rids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do table.insert(rids, ARGV[i]) end
else
  rids = redis.call('ZRANGE', P .. 'c', 0, -1)
end
local out = {}
for _, rid in ipairs(rids) do
  local held = redis.call('HMGET', P .. 'q:' .. rid, 'cl', 'ch', 'sc')
  if held[1] then
    table.insert(out, rid)
    table.insert(out, held[1])
    table.insert(out, held[2] or '0')
    table.insert(out, held[3] or '')
  end
end
return out
"""

# ARGV: prefix, then request ids.
FORGET_CLOSINGS = """
local P = ARGV[1]
for i = 2, #ARGV do
  redis.call('HDEL', P .. 'q:' .. ARGV[i], 'cl', 'ch')
  redis.call('ZREM', P .. 'c', ARGV[i])
end
return #ARGV - 1
"""

REBUILD = """
local key = ARGV[1] .. 's:' .. ARGV[2]
local current = redis.call('GET', key)
redis.call('SET', key, ARGV[3])
if ARGV[4] ~= '' and current then
  local added = tonumber(current) - tonumber(ARGV[4])
  if added > 0 then redis.call('INCRBY', key, string.format('%d', added)) end
end
return redis.call('GET', key)
"""

RESERVED = _PURGE + """
purge(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return redis.call('GET', ARGV[1] .. 'r:' .. ARGV[2]) or '0'
"""

# Read-only: the scope's reservations past their deadline that are still open (not purged).
# ARGV: prefix, scope, now. Returns {request id, deadline, amount, scopes, ...}.
EXPIRED = """
local P, scope, now = ARGV[1], ARGV[2], ARGV[3]
local due = redis.call('ZRANGEBYSCORE', P .. 'd:' .. scope, '-inf', now, 'WITHSCORES')
local out = {}
for i = 1, #due, 2 do
  local qkey = P .. 'q:' .. due[i]
  if redis.call('HGET', qkey, 'st') == 'r' then
    table.insert(out, due[i])
    table.insert(out, due[i + 1])
    table.insert(out, redis.call('HGET', qkey, 'amt'))
    table.insert(out, redis.call('HGET', qkey, 'sc'))
  end
end
return out
"""


class RedisBackend:
    """One asyncio client per event loop: redis.asyncio connections belong to the loop that made them."""

    def __init__(self, target: redis_clients.Target | str):
        self.target = redis_clients.Target(target) if isinstance(target, str) else target
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> ScriptRunner
        self._scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {script text: script}
        self._alone_until = 0.0  # until then the primary is known to have no replica online (no WAIT)

    def client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A bounded pool: a burst of requests queues for a connection (up to 5 s) instead of
            # opening hundreds of sockets at once and failing their connect timeouts.
            client = redis_clients.async_client(self.target, max_connections=64, pool_timeout=5,
                                                socket_connect_timeout=1, socket_timeout=2, decode_responses=True)
            self._clients[loop] = client
        return client

    async def run(self, script: str, *args):
        # EVALSHA, with the calls of one turn of the loop in one trip (relay.redis_scripts).
        loop = asyncio.get_running_loop()
        runner = self._runners.get(loop)
        if runner is None:
            runner = self._runners[loop] = redis_scripts.ScriptRunner(self.client())
        try:
            return await runner.run(script, args)
        except RedisError as error:
            raise LedgerUnavailable(f"The budget ledger (Redis) is unreachable: {error}") from error

    async def call(self, method: str, *args):
        try:
            return await getattr(self.client(), method)(*args)
        except RedisError as error:
            raise LedgerUnavailable(f"The budget ledger (Redis) is unreachable: {error}") from error

    async def run_replicated(self, script: str, replicas: int, wait_ms: int, *args) -> tuple[object, bool]:
        """(the script's result, whether `replicas` replicas acknowledged it, or none is online to).

        The script and WAIT go in one pipeline: WAIT counts the acknowledgements of its own
        connection's writes, so it must follow the script on the same connection.
        """
        client = self.client()
        scripts = self._scripts.setdefault(asyncio.get_running_loop(), {})
        registered = scripts.get(script) or scripts.setdefault(script, client.register_script(script))
        waiting = replicas > 0 and time.monotonic() >= self._alone_until
        try:
            for attempt in range(2):
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.evalsha(registered.sha, 0, *args)
                        if waiting:
                            pipe.wait(replicas, wait_ms)
                        replies = await pipe.execute()
                    break
                except NoScriptError:  # a promoted replica (or a restarted server) has no scripts yet
                    if attempt:
                        raise
                    await client.script_load(script)
            if not waiting or replies[1] >= replicas:
                return replies[0], True
            return replies[0], await self._alone(client)
        except RedisError as error:
            raise LedgerUnavailable(f"The budget ledger (Redis) is unreachable: {error}") from error

    async def _alone(self, client) -> bool:
        """Has the primary no replica online? Then no promotion can lose a write (there is nothing to
        promote), so writes go on unacknowledged; checked again after ALONE_SECONDS."""
        info = await client.info("replication")
        online = sum(1 for key, value in info.items()
                     if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")
        if online:
            return False
        self._alone_until = time.monotonic() + ALONE_SECONDS
        return True


class RedisLedger(Ledger):
    """`replicas` > 0 (Sentinel: docs/design.md section 7): a reservation or settlement counts only
    once that many replicas hold it, so a failover cannot lose a reservation a run streams
    against; a reservation no replica acknowledged in `wait_ms` is given back and refused."""

    def __init__(self, target: redis_clients.Target | str, prefix: str, *, replicas: int = 0, wait_ms: int = 250):
        self.backend = RedisBackend(target)
        self.prefix = prefix
        self.replicas, self.wait_ms = replicas, wait_ms

    async def _write(self, script: str, *args) -> tuple[object, bool]:
        if not self.replicas:
            return await self.backend.run(script, *args), True
        return await self.backend.run_replicated(script, self.replicas, self.wait_ms, *args)

    async def reserve(self, request_id, scopes, *, min_nanos, max_nanos, ttl, now=None):
        now = time.time() if now is None else now
        pairs = [str(part) for scope, limit in scopes for part in (scope, int(limit))]
        reply, replicated = await self._write(
            RESERVE, self.prefix, request_id, repr(float(now)), repr(float(ttl)), int(min_nanos), int(max_nanos),
            RETENTION_SECONDS, *pairs)
        granted, amount, denied, spent, tightest, *missing = reply
        if int(granted) == 1 and not replicated:
            # Held only by a primary whose replicas lag: if it failed now the reservation would
            # vanish while the run streams against it. Give it back (a lost release only holds
            # room until its deadline: refusals, never overspending) and refuse the run.
            with contextlib.suppress(LedgerUnavailable):
                await self.backend.run(SETTLE, self.prefix, request_id, 0, RETENTION_SECONDS)
            raise LedgerUnavailable(f"No replica acknowledged the reservation within {self.wait_ms} ms.")
        if int(granted) == 2:
            return Grant(False, missing=missing)
        if not int(granted):
            return Grant(False, denied_scope=denied, spent_nanos=int(spent))
        return Grant(True, int(amount), tightest_scope=tightest or None)

    async def extend(self, request_id, scopes, *, min_nanos, max_nanos, now=None):
        now = time.time() if now is None else now
        pairs = [str(part) for scope, limit in scopes for part in (scope, int(limit))]
        reply, replicated = await self._write(EXTEND, self.prefix, request_id, repr(float(now)), int(min_nanos),
                                              int(max_nanos), RETENTION_SECONDS, *pairs)
        granted, amount, denied, spent, tightest = reply
        if int(granted) == 1 and not replicated:
            # As for reserve: a promotion could lose it while the run streams against it. What it added
            # stays held until the run settles (refusals meanwhile, never overspending).
            raise LedgerUnavailable(f"No replica acknowledged the reservation within {self.wait_ms} ms.")
        if int(granted) != 1:
            return Grant(False, denied_scope=denied or None, spent_nanos=int(spent))
        return Grant(True, int(amount), tightest_scope=tightest or None)

    async def settle(self, request_id, actual_nanos):
        out, replicated = await self._write(SETTLE, self.prefix, request_id, max(0, int(actual_nanos)),
                                            RETENTION_SECONDS)
        if not replicated:
            logger.warning("the settlement of %s is not on a replica yet: if the primary fails before it is, "
                           "`manage.py reconcile` will report its budget's counter", request_id)
        return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}

    async def settle_closing(self, request_id, actual_nanos, closing, now=None):
        now = time.time() if now is None else now
        out, replicated = await self._write(SETTLE_CLOSING, self.prefix, request_id, max(0, int(actual_nanos)),
                                            RETENTION_SECONDS, repr(float(now)), closing)
        return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}, replicated

    async def held_closings(self, request_ids=None):
        if request_ids is not None and not request_ids:
            return {}
        out = await self.backend.run(HELD_CLOSINGS, self.prefix, *(request_ids or ()))
        return {out[i]: HeldClosing(out[i], out[i + 1], int(out[i + 2]), [s for s in out[i + 3].split("\n") if s])
                for i in range(0, len(out), 4)}

    async def forget_closings(self, request_ids):
        if request_ids:
            await self.backend.run(FORGET_CLOSINGS, self.prefix, *request_ids)

    async def spent(self, scope_key):
        return int(await self.backend.call("get", f"{self.prefix}s:{scope_key}") or 0)

    async def reserved(self, scope_key, now=None):
        now = time.time() if now is None else now
        return int(await self.backend.run(RESERVED, self.prefix, scope_key, repr(float(now)), RETENTION_SECONDS))

    async def rebuild(self, scope_key, spent_nanos, since=None):
        await self.backend.run(REBUILD, self.prefix, scope_key, int(spent_nanos), "" if since is None else int(since))

    async def initialize(self, counters):
        if not counters:
            return
        client = self.backend.client()
        try:
            async with client.pipeline(transaction=True) as pipe:
                for scope, spent in counters.items():
                    pipe.set(f"{self.prefix}s:{scope}", int(spent), nx=True)
                await pipe.execute()
        except RedisError as error:
            raise LedgerUnavailable(f"The budget ledger (Redis) is unreachable: {error}") from error

    async def counters(self, scope_keys):
        if not scope_keys:
            return {}
        values = await self.backend.call("mget", [f"{self.prefix}s:{scope}" for scope in scope_keys])
        return {scope: int(value) for scope, value in zip(scope_keys, values, strict=True) if value is not None}

    async def expired_reservations(self, scope_key, now=None):
        now = time.time() if now is None else now
        out = await self.backend.run(EXPIRED, self.prefix, scope_key, repr(float(now)))
        return [OpenReservation(out[i], int(out[i + 2]), float(out[i + 1]), out[i + 3].split("\n"))
                for i in range(0, len(out), 4)]

    async def clear(self) -> None:
        """Delete every key under this ledger's prefix (tests)."""
        client = self.backend.client()
        async for key in client.scan_iter(match=self.prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            await client.delete(key)

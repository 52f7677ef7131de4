"""The guarded floor's trips (bench/_floor_app.py guarded): what Relay's guarantees cost at the least.

Before the model is asked: one Redis script finds the key's budget and reserves the run's most
(a key it does not know is refused), then one autocommit INSERT writes the run's row without
waiting for its WAL flush (as Relay's opening). After the answer, off the response's path: one
script settles the reservation to the answer's cost, then one statement, one commit, marks the run
done, writes its usage row and appends an audit row whose hash chains to the previous one. Each
on a connection of its own, on the event loop: no thread hop, no ORM, no batching. What Relay does
beyond this (permissions, rate limits, routing, metrics, the chain shared by processes, group
commit) is left out on purpose: this is a floor, so whatever it leaves out only lowers it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid

import psycopg
import redis.asyncio as aioredis

TABLES = """
CREATE TABLE IF NOT EXISTS floor_run (id uuid PRIMARY KEY, bucket text NOT NULL, model text NOT NULL,
    status text NOT NULL, reserved bigint NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS floor_usage (run_id uuid PRIMARY KEY REFERENCES floor_run (id),
    input_tokens integer NOT NULL, output_tokens integer NOT NULL, cost bigint NOT NULL,
    created timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS floor_audit (id bigserial PRIMARY KEY, run_id uuid NOT NULL, prev bytea NOT NULL,
    hash bytea NOT NULL, payload text NOT NULL);
"""
OPEN = "INSERT INTO floor_run (id, bucket, model, status, reserved) VALUES (%s, %s, %s, 'running', %s)"
CLOSE = """
WITH done AS (UPDATE floor_run SET status = 'done' WHERE id = %(run)s RETURNING id),
     usage AS (INSERT INTO floor_usage (run_id, input_tokens, output_tokens, cost)
               SELECT id, %(input)s, %(output)s, %(cost)s FROM done)
INSERT INTO floor_audit (run_id, prev, hash, payload) VALUES (%(run)s, %(prev)s, %(hash)s, %(payload)s)
"""
RESERVE = """
local v = redis.call('HMGET', KEYS[1], 'limit', 'held', 'spent')
if not v[1] then return -1 end
if tonumber(v[2]) + tonumber(v[3]) + tonumber(ARGV[1]) > tonumber(v[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'held', ARGV[1])
return 1
"""
SETTLE = """
redis.call('HINCRBY', KEYS[1], 'held', -tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return 1
"""
# Micro-dollars: 0.001 per 1k input tokens, 0.002 per 1k output (the bench's price), 4,096 tokens at most.
MOST = 4096 * 2
_TOKENS = re.compile(rb'"(prompt|completion)_tokens":\s*(\d+)')


def _bucket(secret: str) -> str:
    return "floor:key:" + hashlib.sha256(secret.encode()).hexdigest()


class Run:
    __slots__ = ("id", "bucket", "model")

    def __init__(self, bucket: str, model: str):
        self.id, self.bucket, self.model = uuid.uuid4(), bucket, model


class Guard:
    def __init__(self, database_url: str, redis_url: str, secret: str):
        self.database_url, self.secret = database_url, secret
        self.redis = aioredis.from_url(redis_url)
        self.reserve, self.settle = self.redis.register_script(RESERVE), self.redis.register_script(SETTLE)
        self.opening = self.closing = None
        self.ready = asyncio.Lock()
        self.chain = asyncio.Lock()
        self.head = b"\0" * 32
        self.pending: set[asyncio.Task] = set()

    async def _start(self) -> None:
        async with self.ready:
            if self.closing is not None:
                return
            opening = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
            await opening.execute("SET synchronous_commit = off")
            closing = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
            await closing.execute(TABLES)
            await self.redis.hset(_bucket(self.secret), mapping={"limit": 10**15, "held": 0, "spent": 0})
            self.opening, self.closing = opening, closing

    async def open(self, authorization: str, raw: bytes) -> Run | None:
        """The run, reserved and recorded; None when the key is unknown or its budget spent."""
        if self.closing is None:
            await self._start()
        model = json.loads(raw)["model"]
        run = Run(_bucket(authorization.removeprefix("Bearer ")), model)
        if await self.reserve(keys=[run.bucket], args=[MOST]) != 1:
            return None
        await self.opening.execute(OPEN, (run.id, run.bucket, model, MOST))
        return run

    def close_later(self, run: Run, answer_tail: bytes) -> None:
        """Settle and record the run after its answer has gone, as Relay's closing does."""
        task = asyncio.get_running_loop().create_task(self._close(run, answer_tail))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _close(self, run: Run, answer_tail: bytes) -> None:
        tokens = {kind.decode(): int(count) for kind, count in _TOKENS.findall(answer_tail)}
        input_tokens, output_tokens = tokens.get("prompt", 0), tokens.get("completion", 0)
        cost = input_tokens + 2 * output_tokens
        await self.settle(keys=[run.bucket], args=[MOST, cost])
        payload = json.dumps({"action": "agent.run", "run": str(run.id), "model": run.model, "cost": cost})
        async with self.chain:
            digest = hashlib.sha256(self.head + payload.encode()).digest()
            await self.closing.execute(CLOSE, {"run": run.id, "input": input_tokens, "output": output_tokens,
                                               "cost": cost, "prev": self.head, "hash": digest, "payload": payload})
            self.head = digest

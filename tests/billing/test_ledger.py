"""The ledger's promises, proven on both implementations (in-process and Redis)."""

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest
from django.conf import settings

from billing.ledger import LedgerUnavailable
from tests.billing.conftest import rid
from tests.conftest import require_redis

NOW = 1_800_000_000.0


def run(coro):
    return asyncio.run(coro)


async def ready(ledger, *scopes, spent=0):
    await ledger.initialize({scope: spent for scope in scopes})


def test_reserve_grants_the_smallest_room_and_settles_to_the_actual(ledger):
    async def scenario():
        await ready(ledger, "org", "team")
        grant = await ledger.reserve("r1", [("org", 1000), ("team", 300)], min_nanos=10, max_nanos=500, ttl=60, now=NOW)
        assert (grant.granted, grant.amount, grant.tightest_scope) == (True, 300, "team")
        assert await ledger.reserved("team", now=NOW) == 300
        assert await ledger.settle("r1", 120) == {"org": 120, "team": 120}
        assert await ledger.reserved("team", now=NOW) == 0
        assert await ledger.spent("org") == 120
        # A second settle (retry) charges nothing more.
        assert await ledger.settle("r1", 120) == {}
        assert await ledger.spent("team") == 120

    run(scenario())


def test_settle_never_exceeds_the_grant(ledger):
    async def scenario():
        await ready(ledger, "s")
        await ledger.reserve("r", [("s", 100)], min_nanos=1, max_nanos=80, ttl=60, now=NOW)
        assert await ledger.settle("r", 10_000) == {"s": 80}

    run(scenario())


def test_denial_names_the_scope_without_room_and_reserves_nothing(ledger):
    async def scenario():
        await ready(ledger, "key", "org", spent=0)
        await ledger.rebuild("key", 95)
        grant = await ledger.reserve("r", [("org", 1000), ("key", 100)], min_nanos=10, max_nanos=50, ttl=60, now=NOW)
        assert (grant.granted, grant.denied_scope, grant.spent_nanos) == (False, "key", 95)
        assert await ledger.reserved("org", now=NOW) == 0
        # Exactly the minimum left is enough.
        grant = await ledger.reserve("r2", [("org", 1000), ("key", 100)], min_nanos=5, max_nanos=50, ttl=60, now=NOW)
        assert (grant.granted, grant.amount) == (True, 5)

    run(scenario())


def test_missing_counters_are_reported_not_assumed_zero(ledger):
    async def scenario():
        grant = await ledger.reserve("r", [("fresh", 100)], min_nanos=1, max_nanos=10, ttl=60, now=NOW)
        assert not grant.granted and grant.missing == ["fresh"]
        await ledger.initialize({"fresh": 40})
        await ledger.initialize({"fresh": 0})  # existing counters are never overwritten by initialize
        assert await ledger.spent("fresh") == 40
        assert (await ledger.reserve("r", [("fresh", 100)], min_nanos=1, max_nanos=100, ttl=60, now=NOW)).amount == 60

    run(scenario())


def test_expired_reservations_return_their_budget_to_every_scope(ledger):
    async def scenario():
        await ready(ledger, "a", "b")
        await ledger.reserve("crashed", [("a", 100), ("b", 100)], min_nanos=1, max_nanos=100, ttl=30, now=NOW)
        denied = await ledger.reserve("r2", [("a", 100)], min_nanos=1, max_nanos=10, ttl=30, now=NOW + 29)
        assert not denied.granted
        # Past the deadline the reserve script purges it, in scope a and (through it) in scope b.
        grant = await ledger.reserve("r3", [("a", 100)], min_nanos=1, max_nanos=100, ttl=30, now=NOW + 31)
        assert (grant.granted, grant.amount) == (True, 100)
        assert await ledger.reserved("b", now=NOW + 31) == 0
        # The crashed instance comes back late: its usage still counts (it happened), once.
        assert await ledger.settle("crashed", 7) == {"a": 7, "b": 7}
        assert await ledger.settle("crashed", 7) == {}

    run(scenario())


def test_release_gives_everything_back(ledger):
    async def scenario():
        await ready(ledger, "s")
        await ledger.reserve("r", [("s", 100)], min_nanos=1, max_nanos=100, ttl=60, now=NOW)
        await ledger.release("r")
        assert (await ledger.reserved("s", now=NOW), await ledger.spent("s")) == (0, 0)

    run(scenario())


def test_reserve_is_idempotent_per_request(ledger):
    async def scenario():
        await ready(ledger, "s")
        first = await ledger.reserve("r", [("s", 100)], min_nanos=1, max_nanos=60, ttl=60, now=NOW)
        again = await ledger.reserve("r", [("s", 100)], min_nanos=1, max_nanos=60, ttl=60, now=NOW)
        assert first.amount == again.amount == 60
        assert await ledger.reserved("s", now=NOW) == 60

    run(scenario())


def test_concurrent_reservations_never_overspend(ledger):
    limit, worst = 10_000, 1_000

    async def cycle(i):
        grant = await ledger.reserve(f"c{i}", [("org", 10**12), ("tight", limit)], min_nanos=100, max_nanos=worst,
                                     ttl=60)
        if not grant.granted:
            return 0
        await asyncio.sleep(0)
        used = grant.amount - (i % 3)  # some finish a little under their grant
        await ledger.settle(f"c{i}", used)
        return used

    async def scenario():
        await ready(ledger, "org", "tight")
        used = await asyncio.gather(*(cycle(i) for i in range(50)))
        assert sum(used) == await ledger.spent("tight") <= limit
        assert await ledger.reserved("tight") == 0

    run(scenario())


def test_extend_grows_a_live_reservation_within_the_room_left(ledger):
    async def scenario():
        await ready(ledger, "org", "team")
        scopes = [("org", 1000), ("team", 500)]
        assert (await ledger.reserve("r", scopes, min_nanos=10, max_nanos=200, ttl=60, now=NOW)).amount == 200
        assert await ledger.reserve("other", [("team", 500)], min_nanos=1, max_nanos=100, ttl=60, now=NOW)
        grown = await ledger.extend("r", scopes, min_nanos=50, max_nanos=400, now=NOW)
        assert (grown.granted, grown.amount, grown.tightest_scope) == (True, 200, "team")  # 500 - 200 - 100 left
        assert (await ledger.reserved("org", now=NOW), await ledger.reserved("team", now=NOW)) == (400, 500)
        # The whole reservation (200 + 200) settles; more is capped at it.
        assert await ledger.settle("r", 450) == {"org": 400, "team": 400}

    run(scenario())


def test_extend_denied_names_the_scope_and_adds_nothing(ledger):
    async def scenario():
        await ready(ledger, "org", "team", spent=0)
        scopes = [("org", 1000), ("team", 300)]
        await ledger.reserve("r", scopes, min_nanos=10, max_nanos=250, ttl=60, now=NOW)
        denied = await ledger.extend("r", scopes, min_nanos=51, max_nanos=100, now=NOW)
        assert (denied.granted, denied.denied_scope) == (False, "team")
        assert await ledger.reserved("org", now=NOW) == 250
        assert await ledger.settle("r", 999) == {"org": 250, "team": 250}
        # A reservation no longer live (settled, or expired) is not grown: denied without a scope.
        gone = await ledger.extend("r", scopes, min_nanos=0, max_nanos=10, now=NOW)
        assert (gone.granted, gone.denied_scope) == (False, None)
        await ledger.reserve("late", scopes, min_nanos=1, max_nanos=10, ttl=5, now=NOW)
        expired = await ledger.extend("late", scopes, min_nanos=0, max_nanos=10, now=NOW + 6)
        assert (expired.granted, expired.denied_scope) == (False, None)
        assert await ledger.reserved("team", now=NOW + 6) == 0

    run(scenario())


def test_concurrent_extensions_and_reservations_never_overspend(ledger):
    limit = 10_000

    async def cycle(i):
        scopes = [("org", 10**12), ("tight", limit)]
        grant = await ledger.reserve(f"x{i}", scopes, min_nanos=100, max_nanos=300, ttl=60)
        if not grant.granted:
            return 0
        held = grant.amount
        for _round in range(3):  # tool rounds, each wanting more
            await asyncio.sleep(0)
            grown = await ledger.extend(f"x{i}", scopes, min_nanos=50, max_nanos=300)
            if not grown.granted:
                break
            held += grown.amount
        await ledger.settle(f"x{i}", held)
        return held

    async def scenario():
        await ready(ledger, "org", "tight")
        used = await asyncio.gather(*(cycle(i) for i in range(40)))
        assert sum(used) == await ledger.spent("tight") <= limit
        assert sum(used) > limit - 300 and await ledger.reserved("tight") == 0

    run(scenario())


def test_counter_values_beyond_float_precision_stay_exact(ledger):
    big = 2**53 - 10  # the largest limits the ledger accepts sit just below this

    async def scenario():
        await ledger.initialize({"s": big - 7})
        grant = await ledger.reserve("r", [("s", big)], min_nanos=1, max_nanos=100, ttl=60, now=NOW)
        assert grant.amount == 7
        assert await ledger.settle("r", 7) == {"s": big}

    run(scenario())


def test_unreachable_redis_is_an_error_never_a_pass():
    from billing.ledger_redis import RedisLedger

    dead = RedisLedger("redis://127.0.0.1:1/0", "{dead}:")
    with pytest.raises(LedgerUnavailable):
        run(dead.reserve("r", [("s", 100)], min_nanos=1, max_nanos=10, ttl=60))
    with pytest.raises(LedgerUnavailable):
        run(dead.settle("r", 1))


WORKER = textwrap.dedent("""
    import asyncio, json, sys
    from billing.ledger_redis import RedisLedger

    url, prefix, name = sys.argv[1], sys.argv[2], sys.argv[3]
    ledger = RedisLedger(url, prefix)

    async def cycle(i):
        grant = await ledger.reserve(f"{name}-{i}", [("tight", 20000)], min_nanos=100, max_nanos=1000, ttl=60)
        if not grant.granted:
            return 0
        await asyncio.sleep(0.001)
        await ledger.settle(f"{name}-{i}", grant.amount)
        return grant.amount

    async def main():
        return sum(await asyncio.gather(*(cycle(i) for i in range(25))))

    print(json.dumps({"used": asyncio.run(main())}))
""")


def test_several_processes_against_redis_never_overspend():
    require_redis()
    from billing.ledger import key_prefix
    from billing.ledger_redis import RedisLedger

    prefix = key_prefix() + "procs" + rid()[:6] + ":"
    ledger = RedisLedger(settings.REDIS_URL, prefix)
    run(ledger.initialize({"tight": 0}))
    env = {**os.environ, "PYTHONPATH": str(settings.BASE_DIR)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, settings.REDIS_URL, prefix, f"p{n}"],
                              stdout=subprocess.PIPE, text=True, env=env) for n in range(4)]
    used = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])["used"] for p in procs]
    spent = run(ledger.spent("tight"))
    run(ledger.clear())
    assert sum(used) == spent <= 20000
    assert spent >= 20000 - 1000  # they did compete for it: the budget is (nearly) used up

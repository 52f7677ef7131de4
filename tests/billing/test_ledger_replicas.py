"""The Redis ledger under Sentinel waits for a replica: a reservation no replica holds is refused.

A primary and a replica of our own (tests/cluster/sentinels.py). A replica stopped with SIGSTOP
stays connected but acknowledges nothing, as a lagging one does: a reservation then must not
stand (a failover now would lose it while its run streams); with the wait switched off
(`replicas=0`, the control removed) the same reservation is granted.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from billing.ledger import LedgerUnavailable
from tests.billing.conftest import rid
from tests.conftest import require_redis

pytestmark = [pytest.mark.services]
SCOPE = "b1.0:2026-01"


@pytest.fixture
def servers():
    require_redis()
    from tests.cluster.sentinels import ReplicatedRedis

    pair = ReplicatedRedis(replicas=1)
    yield pair
    pair.stop()


def ledger_on(pair, replicas: int):
    from billing.ledger_redis import RedisLedger

    return RedisLedger(f"redis://127.0.0.1:{pair.primary.port}/0", f"{{t{uuid.uuid4().hex[:6]}}}:ledger:",
                       replicas=replicas, wait_ms=1000)  # generous: a busy CI machine acknowledges late


async def reserve(ledger, request_id: str):
    await ledger.initialize({SCOPE: 0})
    return await ledger.reserve(request_id, [(SCOPE, 10_000)], min_nanos=10, max_nanos=100, ttl=60)


def test_a_granted_reservation_is_on_the_replica_before_the_run_proceeds(servers):
    ledger, request_id = ledger_on(servers, 1), rid()
    grant = asyncio.run(reserve(ledger, request_id))  # a fresh server: the script is loaded on NOSCRIPT
    assert grant.granted and grant.amount == 100
    # No waiting here: the replica acknowledged before reserve returned.
    assert servers.replicas[0].client().hget(f"{ledger.prefix}q:{request_id}", "st") == "r"


def test_no_replica_acknowledging_refuses_the_reservation_and_gives_it_back(servers):
    servers.replicas[0].pause()
    try:
        ledger = ledger_on(servers, 1)
        with pytest.raises(LedgerUnavailable, match="No replica acknowledged"):
            asyncio.run(reserve(ledger, rid()))
        assert asyncio.run(ledger.reserved(SCOPE)) == 0
        unguarded = ledger_on(servers, 0)  # the control removed: granted, held by the primary alone
        assert asyncio.run(reserve(unguarded, rid())).granted
    finally:
        servers.replicas[0].resume()


def test_a_primary_without_replicas_goes_on_alone(servers):
    from tests.cluster.support import wait_for

    servers.replicas[0].kill()
    assert wait_for(lambda: servers.primary.online_replicas() == 0, 10)
    ledger = ledger_on(servers, 1)
    assert asyncio.run(reserve(ledger, rid())).granted  # nothing could be promoted to lose it
    assert asyncio.run(ledger.settle(rid(), 5)) == {}  # an unknown request: nothing settled, no error


class _Failing:
    """A ledger whose primary is gone for the first `failures` settlements (a promotion under way)."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    async def settle(self, request_id, actual_nanos):
        self.calls += 1
        if self.calls <= self.failures:
            raise LedgerUnavailable("primary gone")
        return {SCOPE: actual_nanos}


@pytest.mark.parametrize("retry_seconds, settled", [(5, {SCOPE: 7}), (0, {})])
def test_a_settlement_waits_for_the_promoted_primary(settings, retry_seconds, settled):
    import billing.ledger as ledger_module
    from billing.services import Charge, _settle

    settings.RELAY_LEDGER_RETRY_SECONDS = retry_seconds  # 0: the control removed, the spend is left out
    failing, previous = _Failing(2), ledger_module._ledger
    ledger_module._ledger = failing
    try:
        charge = Charge(request_id=rid(), model="m", price_id=1, input_nanos_per_token=1, output_nanos_per_token=1,
                        granted_nanos=100, reserved=True)
        assert asyncio.run(_settle(charge, 7)) == settled
    finally:
        ledger_module._ledger = previous

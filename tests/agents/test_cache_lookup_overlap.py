"""Where a run waits for the response cache's answer, and where its deployment is acquired.

The cache's lookup (a Redis trip: agents.optimizer.look_up_soon) goes out as soon as the plan is
decided. A cached answer needs no reservation, so a run a budget covers waits for the answer before
it reserves: a hit is served even when the budget is used up. A run no budget covers reserves
nothing, so its opening (the same for a hit as for a miss) commits meanwhile and the answer is
awaited after it, before the model is asked; a hit found then is priced at zero and gives back the
deployment acquired for a miss, and a lookup that fails then closes the run at once (its rows exist).

The first attempt's deployment is acquired beside the reservation (agents.router.Ahead), not after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents import fallbacks, optimizer, router
from agents.actions.endpoints import create_endpoint
from agents.models import Message
from agents.optimizer import cache as response_cache
from agents.providers.catalog import resolve
from audit import actions
from audit.models import AuditEvent
from billing import services as billing_services
from billing.actions.budgets import set_budget
from billing.models import ModelPrice, UsageRecord
from tests.agents.test_opening_first import replace_opening
from tests.conftest import require_postgres
from tests.reconciled import assert_reconciled

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def issued(users, fake_upstream):
    """A key no budget covers, on a model with one deployment."""
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    return create_api_key(users["user"], "cache overlap")


def budget_on(users, issued, limit_usd: str) -> None:
    set_budget(actor=users["admin"], organization=users["user"].organization, scope="api_key", target=issued.key.pk,
               period="monthly", limit_usd=Decimal(limit_usd), hard=True, alert_thresholds=[])


def ask(server, issued, query: str, *, cache: bool = True) -> httpx.Response:
    body = {"query": query, "agent_type": "general", "model": "fake-large", "cache": cache}
    return httpx.post(f"{server.url}/api/v1/query", json=body, headers={"Authorization": f"Bearer {issued.secret}"},
                      timeout=30)


def record_of(response: httpx.Response) -> UsageRecord:
    assert response.status_code == 200, response.text
    return UsageRecord.objects.get(message_id=response.json()["message_id"])


def ask_until_cached(server, issued, query: str) -> UsageRecord:
    """The question asked until the cache answers it: its first answer is stored after the client
    has it (the closing runs after the answer on a serving loop), so the next ask may miss too."""
    for _ in range(50):
        record = record_of(ask(server, issued, query))
        if record.cached:
            return record
    raise AssertionError(f"{query!r} was never answered from the cache")


def test_the_acquire_goes_out_beside_the_reservation(asgi_server, users, issued, monkeypatch):
    """The reservation's trip waits (up to 10 s) for the acquire to begin: it begins at once when it
    goes out beside the reservation, and only after the reservation returned when it follows it."""
    budget_on(users, issued, "10")
    steps, began = [], {}
    reserve, acquire = billing_services._reserve, router.acquire

    def acquire_began() -> asyncio.Event:  # made on the server's loop, where both run
        return began.setdefault("event", asyncio.Event())

    async def reserving(*args, **kwargs):
        steps.append("reservation")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acquire_began().wait(), 10)
        grant = await reserve(*args, **kwargs)
        steps.append("reserved")
        return grant

    async def picking(*args, **kwargs):
        steps.append("acquire")
        acquire_began().set()
        return await acquire(*args, **kwargs)

    monkeypatch.setattr(billing_services, "_reserve", reserving)
    monkeypatch.setattr(router, "acquire", picking)

    record = record_of(ask(asgi_server, issued, "Say hello.", cache=False))

    assert steps == ["reservation", "acquire", "reserved"]
    assert record.status == "complete" and record.cost > 0
    [deployment] = router.snapshot(resolve("fake-large"))
    assert deployment["in_flight"] == 0
    assert_reconciled()


def test_without_a_budget_the_opening_commits_before_the_cache_answers(asgi_server, issued, monkeypatch):
    """The probe's answer waits (up to 10 s) for the opening to be written: it comes at once when the
    opening commits beside the lookup, and only after that wait when the run awaits the lookup first."""
    require_postgres()  # the opening on the event loop's own connection, as production writes it
    steps, opened = [], {}
    has, answer = response_cache.ResponseCache.has, fallbacks.answer

    def opening_written() -> asyncio.Event:
        return opened.setdefault("event", asyncio.Event())

    async def probing(self, key):
        steps.append("probe")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opening_written().wait(), 10)
        found = await has(self, key)
        steps.append("probe answered")
        return found

    def asking(*args, **kwargs):
        steps.append("model asked")
        return answer(*args, **kwargs)

    def written():
        steps.append("opened")
        opening_written().set()

    replace_opening(monkeypatch, "loop", after=written)
    monkeypatch.setattr(response_cache.ResponseCache, "has", probing)
    monkeypatch.setattr(fallbacks, "answer", asking)

    record = record_of(ask(asgi_server, issued, "A question nobody asked yet."))

    assert steps == ["probe", "opened", "probe answered", "model asked"]
    assert record.status == "complete" and not record.cached
    assert_reconciled()


def test_a_hit_found_after_the_opening_costs_nothing_and_gives_its_deployment_back(asgi_server, issued,
                                                                                   fake_upstream, monkeypatch):
    """No budget: the hit is found after the opening, with the deployment already acquired for a miss;
    that lease is given back before the cached answer is replayed, not when the replay has ended."""
    held_while_replaying, replay = [], optimizer.replay

    def replaying(answer):
        held_while_replaying.append(router.snapshot(resolve("fake-large"))[0]["in_flight"])
        return replay(answer)

    monkeypatch.setattr(optimizer, "replay", replaying)
    first = record_of(ask(asgi_server, issued, "Say hello."))
    hit = ask_until_cached(asgi_server, issued, "Say hello.")

    assert (first.cached, first.cost > 0) == (False, True)
    assert hit.status == "complete" and hit.cost == 0 and hit.output_tokens > 0
    misses = UsageRecord.objects.filter(cached=False).count()
    assert len(fake_upstream.requests) == misses  # the hit asked no model
    [deployment] = router.snapshot(resolve("fake-large"))
    assert (deployment["in_flight"], deployment["state"]) == (0, "closed")  # the acquired lease was given back
    assert held_while_replaying == [0]
    assert_reconciled()


def test_a_lookup_that_fails_after_the_opening_closes_the_run(asgi_server, issued, fake_upstream, monkeypatch):
    """No budget: the opening is written before the cache answers, so a lookup that fails then leaves
    rows behind; the run is closed at once as one that asked no model, not left running for the
    periodic job."""
    async def failing(self, key):
        raise RuntimeError("the lookup failed")

    monkeypatch.setattr(response_cache.ResponseCache, "has", failing)

    response = ask(asgi_server, issued, "A question nobody asked yet.")

    assert response.status_code == 500 and response.json()["error"]["code"]
    answer = Message.objects.get(role="assistant")
    assert (answer.status, answer.error_code) == ("error", "agent_error")
    assert UsageRecord.objects.get(message_id=answer.pk).cost == 0
    assert fake_upstream.requests == []
    [deployment] = router.snapshot(resolve("fake-large"))
    assert deployment["in_flight"] == 0
    assert_reconciled()


def test_a_hit_is_served_when_the_budget_is_used_up(asgi_server, users, issued, fake_upstream):
    """A cached answer costs nothing, so it needs no room in the budget: known before the reservation,
    which a used-up budget refuses. A new question is refused, audited once; the hit is not."""
    ask_until_cached(asgi_server, issued, "Say hello.")
    asked = len(fake_upstream.requests)
    budget_on(users, issued, "0.000001")  # less than one token's price: every miss is refused

    hit = record_of(ask(asgi_server, issued, "Say hello."))
    refused = ask(asgi_server, issued, "Something new.")

    assert hit.cached and hit.cost == 0 and hit.status == "complete"
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    assert len(fake_upstream.requests) == asked  # neither asked the model
    [deployment] = router.snapshot(resolve("fake-large"))
    assert deployment["in_flight"] == 0  # the refused run's lease was given back
    assert AuditEvent.objects.filter(action=actions.BUDGET_EXCEEDED).count() == 1
    assert_reconciled()

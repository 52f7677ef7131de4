"""The model is asked only after the run's opening has committed; its deployment is picked meanwhile.

Control: agents.runner._prepare awaits runs.open_run before it returns, and the model's answer
(agents.fallbacks.answer) is begun only by the stream that follows. A model call begun while the
opening commits would reach the upstream even when the database refuses the opening: a paid
call with no row for `reconcile` to find (70ff43c did this, and was withdrawn).

Acquiring the deployment asks no model, so it runs while the opening commits (agents.router.Ahead,
one round trip off the time to first token); a run that never gets to ask gives the lease back.

Each holds on both ways the opening is written: on the event loop's own connection
(relay.eventloop.pg, production's on PostgreSQL) and on a DB thread (RELAY_DB_LOOP_WRITES=0, other
databases).
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import httpx
import pytest
from django.db import OperationalError

from accounts.actions.keys import create_api_key
from agents import fallbacks, router, runner
from agents.actions import run_rows, runs
from agents.actions.endpoints import create_endpoint
from agents.models import Message
from agents.providers.catalog import resolve
from billing.models import Budget, ModelPrice, UsageRecord
from tests.reconciled import assert_reconciled
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def secret(users, fake_upstream):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    issued = create_api_key(users["user"], "opening first")
    Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=issued.key,
                          period="monthly", limit_usd=Decimal("10"), hard=True, alert_thresholds=[])
    return issued.secret


@pytest.fixture(params=["loop", "thread"])
def opening_path(request, settings):
    """Where the opening is written: the event loop's connection, or a DB thread."""
    if request.param == "loop" and not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("the loop's own connection is PostgreSQL's")
    settings.RELAY_DB_LOOP_WRITES = request.param == "loop"
    return request.param


def replace_opening(monkeypatch, path: str, before=None, fail: Exception | None = None, after=None):
    """The opening's write on `path`, with `await before()` (loop) or `before()` (thread) first, then
    `fail` raised instead of writing, or the write and `after()`."""
    if path == "loop":
        write = run_rows.open_rows_on_loop

        async def on_loop(*args):
            if before is not None:
                await before()
            if fail is not None:
                raise fail
            result = await write(*args)
            if after is not None:
                after()
            return result

        monkeypatch.setattr(run_rows, "open_rows_on_loop", on_loop)
        return
    write_one = runs._OPENINGS.write_one

    def on_thread(write):
        if before is not None:
            before()
        if fail is not None:
            raise fail
        result = write_one(write)
        if after is not None:
            after()
        return result

    monkeypatch.setattr(runs._OPENINGS, "write_one", on_thread)


@pytest.fixture
def steps(monkeypatch, opening_path):
    """The order of the opening's write and the start of the model's answer, as they happen."""
    seen: list[str] = []
    answer = fallbacks.answer

    def asking(*args, **kwargs):
        seen.append("model asked")
        return answer(*args, **kwargs)

    noted = (lambda: seen.append("opening")) if opening_path == "thread" else None

    async def noted_on_loop():
        seen.append("opening")

    replace_opening(monkeypatch, opening_path, before=noted or noted_on_loop)
    monkeypatch.setattr(fallbacks, "answer", asking)
    return seen


def post_stream(server, secret):
    body = {"query": "Say hello.", "agent_type": "general", "model": "fake-large", "cache": False}
    return httpx.post(f"{server.url}/api/v1/stream", json=body, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30)


def test_the_model_is_asked_after_the_opening_commits(asgi_server, secret, fake_upstream, steps):
    response = post_stream(asgi_server, secret)

    assert response.status_code == 200
    assert parse_sse(response.iter_lines())[-1]["status"] == "complete"
    assert steps == ["opening", "model asked"]
    assert Message.objects.get(role="assistant").status == "complete"
    assert_reconciled()


def test_an_opening_the_database_refuses_asks_no_model(asgi_server, secret, fake_upstream, steps, monkeypatch,
                                                       opening_path):
    async def noted_on_loop():
        steps.append("opening")

    replace_opening(monkeypatch, opening_path, fail=OperationalError("the database went away"),
                    before=(lambda: steps.append("opening")) if opening_path == "thread" else noted_on_loop)

    response = post_stream(asgi_server, secret)

    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert steps == ["opening"] and fake_upstream.requests == []
    assert not Message.objects.exists() and not UsageRecord.objects.exists()
    assert_reconciled()  # the reservation was given back
    [deployment] = router.snapshot(resolve("fake-large"))
    assert (deployment["in_flight"], deployment["state"]) == (0, "closed")  # the lease taken meanwhile, back


def test_the_deployment_is_acquired_while_the_opening_commits(asgi_server, secret, fake_upstream, steps,
                                                              monkeypatch, opening_path):
    """The opening's write waits (up to 10 s) for the acquire to begin: it begins at once when it
    overlaps the opening, and only after the opening returned when it follows it."""
    acquiring, on_loop = threading.Event(), {}  # on the loop path: an asyncio.Event of the server's loop
    acquire = router.acquire

    def loop_event() -> asyncio.Event:
        return on_loop.setdefault("event", asyncio.Event())

    async def wait_on_loop():
        await asyncio.wait_for(loop_event().wait(), 10)

    async def picking(*args, **kwargs):
        steps.append("acquire")
        acquiring.set()
        loop_event().set()
        return await acquire(*args, **kwargs)

    # Around `steps`' own opening, which notes "opening" as it writes.
    replace_opening(monkeypatch, opening_path, after=lambda: steps.append("opened"),
                    before=(lambda: acquiring.wait(10)) if opening_path == "thread" else wait_on_loop)
    monkeypatch.setattr(router, "acquire", picking)

    response = post_stream(asgi_server, secret)

    assert response.status_code == 200
    assert parse_sse(response.iter_lines())[-1]["status"] == "complete"
    assert steps == ["acquire", "opening", "opened", "model asked"]  # one acquire: the first attempt took it
    [deployment] = router.snapshot(resolve("fake-large"))
    assert (deployment["in_flight"], deployment["state"]) == (0, "closed")
    assert len(fake_upstream.requests) == 1
    assert_reconciled()


def test_a_run_abandoned_before_it_asks_gives_its_deployment_back(users, secret, fake_upstream):
    """The client gone between the opening and the stream's start: the run closes without a model call,
    and the lease acquired for it is released (neutral: the deployment did nothing wrong)."""
    request = runner.new_request(users["user"], None, {"agent_type": "general", "model": "fake-large",
                                                       "query": "Say hello.", "cache": False})

    async def scenario():
        await runner.abandon(await runner.prepare(request))

    asyncio.run(scenario())

    [deployment] = router.snapshot(resolve("fake-large"))
    assert (deployment["in_flight"], deployment["state"]) == (0, "closed")
    assert fake_upstream.requests == []
    assert Message.objects.get(role="assistant").status == "cancelled"
    assert_reconciled()

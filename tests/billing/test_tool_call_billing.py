"""What a model writes into tool calls is output: billed as soon as the round ends, and bounded by
a hard budget at the upstream (agents.rounds.Rounds: `max_tokens` per round, `calls_written`).

Controls: a round's max_tokens is what a hard budget still has room for (the per-token check sees
only answer text); the calls are counted before any is handed to the client or run; a run cut
short bills at least what the upstream reported for the rounds it finished.
"""

import asyncio
import gc
import json
import threading
import time

import httpx
import pytest

from billing.models import UsageRecord
from billing.money import usd_to_nanos
from tests.billing.test_live_budgets import IN_PRICE, OUT_PRICE, key_budget, ledger_figures
from tests.conftest import start_asgi_server
from tests.reconciled import assert_reconciled

pytestmark = pytest.mark.django_db(transaction=True)

WRITE = [{"type": "function", "function": {"name": "write", "description": "Write text.",
                                           "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}]
LONG = {"text": " ".join(["word"] * 3000)}  # ~3,000 tokens of output, written into a tool call
WAIT = 30


def chat(server, secret: str, **body):
    body = {"messages": [{"role": "user", "content": "Write."}], "tools": WRITE, "max_tokens": 4000, **body}
    with httpx.Client(timeout=60) as client:
        return client.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"})


def record_of(budget, wait: float = WAIT) -> UsageRecord:
    deadline = time.monotonic() + wait  # the closing commits after the answer, on the server's loop
    while not UsageRecord.objects.filter(api_key__budgets=budget).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return UsageRecord.objects.get(api_key__budgets=budget)


def test_calls_the_client_runs_are_billed_when_the_upstream_reports_no_usage(asgi_server, users, fake_upstream,
                                                                            upstream_model):
    fake_upstream.configure(tool_calls=[{"name": "write", "arguments": LONG}], usage=False)
    secret, budget = key_budget(users["user"], 10**9)
    response = chat(asgi_server, secret, model=upstream_model)
    assert response.status_code == 200, response.content[:300]
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert len(json.loads(call["function"]["arguments"])["text"].split()) == 3000  # the client has the work
    record = record_of(budget)
    assert record.output_tokens >= 3000
    assert ledger_figures(budget, record.created_at) == (usd_to_nanos(record.cost), 0)
    assert_reconciled()


def test_a_round_asks_the_upstream_for_no_more_than_the_hard_budget_has_room_for(asgi_server, users, fake_upstream,
                                                                                upstream_model):
    fake_upstream.configure(tool_calls=[{"name": "write", "arguments": LONG}])
    limit = 400 * IN_PRICE + 50 * OUT_PRICE  # the prompt, and about fifty more tokens of output
    secret, budget = key_budget(users["user"], limit)
    response = chat(asgi_server, secret, model=upstream_model)
    assert response.status_code == 200, response.content[:300]
    answer = response.json()
    asked = fake_upstream.requests[-1].body["max_tokens"]
    record = record_of(budget)
    # The most the upstream could write fits what the budget had left after the prompt.
    assert asked < 4000 and record.input_tokens * IN_PRICE + asked * OUT_PRICE <= limit
    # The calls, cut short where the budget ended, are not handed over: the run stopped at its budget.
    assert "tool_calls" not in answer["choices"][0]["message"]
    assert record.status == "budget_stop" and usd_to_nanos(record.cost) <= limit
    assert ledger_figures(budget, record.created_at) == (usd_to_nanos(record.cost), 0)
    assert_reconciled()


def stuck_once_a_tool_runs(app, stuck: threading.Event):
    """Relay behind a transport whose writes stop draining once the run's tool started (its client
    stopped reading): the server is waiting in a send when the client's hang-up arrives."""

    async def transport(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        tool_started = False

        async def send_until_stuck(message):
            nonlocal tool_started
            if tool_started:
                stuck.set()
                await asyncio.Event().wait()  # never drains: only the request's cancellation ends it
            tool_started = b'"status": "running"' in message.get("body", b"")
            await send(message)

        await app(scope, receive, send_until_stuck)

    return transport


@pytest.fixture
def without_cyclic_gc():
    """The collector closes a generator nobody closed, whenever it happens to run: not during this test."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


@pytest.mark.parametrize("sends", ["draining", "stuck"])
def test_an_agents_tool_call_is_billed_when_the_client_leaves_while_the_tool_runs(
        sends, transactional_db, settings, users, fake_upstream, upstream_model, monkeypatch, without_cyclic_gc):
    program = "print(1)\n# " + " ".join(["word"] * 3000)
    fake_upstream.configure(tool_calls=[{"name": "run_python", "arguments": {"code": program}}])

    async def slow_program(code, limits=None):  # the model's program runs until the run is cancelled
        await asyncio.sleep(4 * WAIT)

    monkeypatch.setattr("agents.kinds.code.run_python", slow_program)
    # Stuck: the server's next write after the tool started is a heartbeat, soon rather than in 15 s.
    monkeypatch.setattr("agents.api.sse.HEARTBEAT_SECONDS", 0.1)
    stuck = threading.Event()
    server = start_asgi_server(settings, around=(lambda app: stuck_once_a_tool_runs(app, stuck)) if sends == "stuck"
                               else None)
    secret, budget = key_budget(users["user"], 10**9)
    body = {"query": "Write me a long program.", "agent_type": "code", "model": upstream_model, "max_tokens": 4000}
    try:
        with httpx.Client(timeout=60) as client, client.stream(
                "POST", f"{server.url}/api/v1/stream", json=body, headers={"Authorization": f"Bearer {secret}"}) as sse:
            for line in sse.iter_lines():
                event = json.loads(line[6:]) if line.startswith("data: ") else {}
                if event.get("type") == "tool_call" and event["status"] == "running":
                    assert len(event["input"]["code"].split()) > 3000  # the model's whole program reached the client
                    assert sends == "draining" or stuck.wait(WAIT)
                    break  # and the client hangs up while it runs
        record = record_of(budget, wait=4 * WAIT)  # a loaded machine may take a while to see the hang-up
    finally:
        server.stop()
    assert record.status == "cancelled" and record.output_tokens >= 3000
    assert usd_to_nanos(record.cost) == record.input_tokens * IN_PRICE + record.output_tokens * OUT_PRICE
    assert_reconciled()

"""A tool round is reserved before it is sent, and every round is billed (docs/design.md section 7).

A round after the first sends the whole conversation to the model again. Controls: agents.rounds
(the round counted and the reservation grown before the round is sent, through
billing.services.extend_charge and the ledger's `extend`), and billing.services' settle, which
first reserves on top what a cost passes its reservation by; under a hard budget, billing.services.grow_to_cost
grows the grant to the cost where the budget has room (the rest stays capped at the limit).
"""

import asyncio
from decimal import Decimal

import httpx
import pytest

from agents.registry import get_agent
from agents.tokenizer import count_message_tokens, count_tool_tokens
from billing.models import Budget, UsageRecord
from billing.money import usd_to_nanos
from tests.billing.test_live_budgets import IN_PRICE, OUT_PRICE, key_budget, ledger_figures, stream_one
from tests.reconciled import assert_reconciled

pytestmark = pytest.mark.django_db(transaction=True)

# A long question the tool round sends again: the second round costs about as much input as the first.
# (Words Relay's tokenizer and the fake upstream both count as one token each.)
QUESTION = "What is two plus two? " + " ".join(["data"] * 1500)
MAX_TOKENS = 20


@pytest.fixture
def tool_calling(fake_upstream):
    """The model calls the math agent's calculator once, then answers from its result."""
    fake_upstream.configure(tool_calls=[{"name": "calculator", "arguments": {"expression": "2+2"}}])
    return fake_upstream


def first_round_messages_tokens() -> int:
    return count_message_tokens([{"role": "system", "content": get_agent("math").system_prompt},
                                 {"role": "user", "content": QUESTION}])


def first_round_tokens() -> int:
    """The first round's prompt as an upstream bills it: the math agent's system prompt, the question and
    the definitions of the tools sent beside them."""
    return first_round_messages_tokens() + count_tool_tokens([tool.spec() for tool in get_agent("math").tools])


def ask(server, secret: str, **extra) -> tuple[int, list[dict]]:
    body = {"query": QUESTION, "agent_type": "math", "model": "fake-large", "max_tokens": MAX_TOKENS, **extra}

    async def once():
        async with httpx.AsyncClient(timeout=60) as client:
            return await stream_one(client, server.url, secret, body)

    return asyncio.run(once())


def exact_cost(record) -> Decimal:
    return Decimal(record.input_tokens * IN_PRICE + record.output_tokens * OUT_PRICE) / 10**9


def test_every_tool_round_is_billed_in_full_and_counted_by_the_budget(asgi_server, users, tool_calling,
                                                                      upstream_model):
    secret, budget = key_budget(users["user"], 10**9)  # a hard $1: room for both rounds
    status, events = ask(asgi_server, secret)
    assert status == 200 and events[-1]["status"] == "complete", events[-3:]
    assert len(tool_calling.requests) == 2 and tool_calling.requests[1].body["messages"][-1]["role"] == "tool"
    record = UsageRecord.objects.get(api_key__budgets=budget)
    # Both prompts, as the upstream reported them: the record is not cut at the first round's reservation.
    assert record.input_tokens > 2 * 1500 and record.cost == exact_cost(record)
    assert ledger_figures(budget, record.created_at) == (usd_to_nanos(record.cost), 0)
    assert_reconciled()


def test_a_hard_budget_without_room_for_the_next_round_stops_the_run_before_it_is_sent(
        asgi_server, users, tool_calling, upstream_model):
    # Room for the first round's worst case and a little more, not for the conversation sent again.
    first = first_round_tokens()
    secret, budget = key_budget(users["user"], (first + 200) * IN_PRICE + MAX_TOKENS * OUT_PRICE)
    status, events = ask(asgi_server, secret)
    assert status == 200 and events[-1]["status"] == "budget_stop", events[-3:]
    assert [e["code"] for e in events if e["type"] == "error"] == ["budget_exceeded"]
    assert [e["status"] for e in events if e["type"] == "tool_call"] == ["running", "done"]
    assert len(tool_calling.requests) == 1  # the second round never reached the upstream
    record = UsageRecord.objects.get(api_key__budgets=budget)
    # Billed: the first round's prompt and the tool call the model wrote; within the budget.
    assert record.status == "budget_stop" and record.input_tokens == first and record.output_tokens > 0
    assert record.cost == exact_cost(record) <= budget.limit_usd
    assert ledger_figures(budget, record.created_at) == (usd_to_nanos(record.cost), 0)
    assert_reconciled()


def test_a_soft_budget_counts_what_the_upstream_reported_beyond_the_estimate(asgi_server, users, fake_upstream,
                                                                            upstream_model):
    # The upstream counts far more prompt than Relay's estimate; no hard budget caps the cost.
    fake_upstream.configure(prompt_tokens=5000)
    secret, budget = key_budget(users["user"], 10**6)
    Budget.objects.filter(pk=budget.pk).update(hard=False)
    status, events = ask(asgi_server, secret, query="What is two plus two?", agent_type="general")
    assert status == 200 and events[-1]["status"] == "complete", events[-3:]
    record = UsageRecord.objects.get(api_key__budgets=budget)
    assert record.input_tokens == 5000 and record.cost == exact_cost(record)
    assert ledger_figures(budget, record.created_at) == (usd_to_nanos(record.cost), 0)
    assert_reconciled()


def test_a_hard_budget_with_room_bills_what_the_upstream_reported_beyond_the_estimate(
        asgi_server, users, fake_upstream, upstream_model):
    # Control: billing.services.grow_to_cost before the settle. Without it the record stopped at
    # the reservation (Relay's estimate of the prompt), and the rest of the upstream's bill went
    # unbilled although the budget had room for it.
    fake_upstream.configure(prompt_tokens=5000)
    secret, budget = key_budget(users["user"], 10**7)  # a hard $0.01: room for 5,000 tokens and more
    status, events = ask(asgi_server, secret, query="What is two plus two?", agent_type="general")
    assert status == 200 and events[-1]["status"] == "complete", events[-3:]
    record = UsageRecord.objects.get(api_key__budgets=budget)
    assert record.input_tokens == 5000 and record.cost == exact_cost(record)
    assert ledger_figures(budget, record.created_at) == (usd_to_nanos(record.cost), 0)
    assert_reconciled()


def test_a_hard_budget_without_that_room_still_caps_the_record_at_its_limit(asgi_server, users, fake_upstream,
                                                                           upstream_model):
    fake_upstream.configure(prompt_tokens=5000)
    limit = 1000 * IN_PRICE + MAX_TOKENS * OUT_PRICE  # enough for the estimate, not for 5,000 tokens
    secret, budget = key_budget(users["user"], limit)
    status, events = ask(asgi_server, secret, query="What is two plus two?", agent_type="general")
    assert status == 200, events[-3:]
    record = UsageRecord.objects.get(api_key__budgets=budget)
    assert record.cost < exact_cost(record) and usd_to_nanos(record.cost) == limit  # the limit holds, exactly
    assert ledger_figures(budget, record.created_at) == (limit, 0)
    assert_reconciled()


def test_a_tool_round_draws_on_the_keys_tokens_per_minute(asgi_server, users, tool_calling, upstream_model):
    # Control: agents.rounds admits each further round against the key's tokens/minute. Room for the
    # first round's input and max_tokens, not for the conversation sent again.
    from accounts.actions.keys import create_api_key

    key = create_api_key(users["user"], "per minute", tokens_per_minute=first_round_tokens() + 500)
    status, events = ask(asgi_server, key.secret)
    assert status == 200 and events[-1]["status"] == "error", events[-3:]
    assert [e["code"] for e in events if e["type"] == "error"] == ["rate_limited"]
    assert len(tool_calling.requests) == 1  # the second round never reached the upstream
    record = UsageRecord.objects.get(api_key=key.key)
    assert record.input_tokens == first_round_tokens() and record.cost == exact_cost(record)
    assert_reconciled()


def test_a_hard_budget_with_room_for_the_messages_but_not_the_tools_refuses_before_the_model_is_asked(
        asgi_server, users, fake_upstream, upstream_model):
    # Control: agents.upstream.first_input_tokens counting the agent's own tools. Without it the first
    # call's reservation held only the messages, the tools (129 tokens here) went with them, and an
    # upstream billing what it was sent spent 213,000 nano-dollars of this 84,000 hard limit, unbilled.
    assert first_round_tokens() > first_round_messages_tokens()
    fake_upstream.configure(tokens=MAX_TOKENS, prompt_tokens=first_round_tokens())
    limit = first_round_messages_tokens() * IN_PRICE + MAX_TOKENS * OUT_PRICE
    secret, budget = key_budget(users["user"], limit)
    status, events = ask(asgi_server, secret, cache=False)
    assert status == 402 and events[0]["error"]["code"] == "budget_exceeded", (status, events)
    assert fake_upstream.requests == []  # nothing was spent past the limit: the model was never asked
    assert ledger_figures(budget) == (0, 0)


def test_the_first_rounds_tools_are_reserved_and_billed_as_the_upstream_counts_them(
        asgi_server, users, fake_upstream, upstream_model):
    fake_upstream.configure(tokens=MAX_TOKENS, prompt_tokens=first_round_tokens())
    limit = first_round_tokens() * IN_PRICE + MAX_TOKENS * OUT_PRICE  # the run's worst case, exactly
    secret, budget = key_budget(users["user"], limit)
    status, events = ask(asgi_server, secret, cache=False)
    assert status == 200 and events[-1]["status"] == "complete", events[-3:]
    sent = fake_upstream.requests[0].body
    assert [tool["function"]["name"] for tool in sent["tools"]] == [tool.name for tool in get_agent("math").tools]
    assert sent["max_tokens"] == MAX_TOKENS  # the reservation left the whole answer its room
    record = UsageRecord.objects.get(api_key__budgets=budget)
    assert record.input_tokens == first_round_tokens() and record.cost == exact_cost(record)
    assert usd_to_nanos(record.cost) == limit
    assert ledger_figures(budget, record.created_at) == (limit, 0)
    assert_reconciled()

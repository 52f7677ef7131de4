"""Money that cannot be gamed (Trust I): many runs sharing every identifier a client controls.

48 runs over two Relay processes share a request id, an idempotency key or a conversation id,
against a hard budget with room for at most 10 of them. Whatever the interleaving: spend stays
within the limit, every answered run has exactly one usage record (and a replayed one none),
nothing is left running, and the ledger equals the usage records.
"""

import asyncio
import uuid

import httpx
import pytest

from agents.models import Conversation, Message
from billing.models import UsageRecord
from tests.billing.test_live_budgets import (
    IN_PRICE,
    OUT_PRICE,
    key_budget,
    ledger_figures,
    live_settings,
    prompt_tokens,
)
from tests.reconciled import assert_reconciled
from tests.support.live import instances
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["live_settings"]
QUERY, OUTPUT = "Share everything.", 6


async def _run(client, url, secret, *, path="query", request_id=None, idempotency_key=None, conversation_id=None):
    headers = {"Authorization": f"Bearer {secret}", "X-Request-ID": request_id or str(uuid.uuid4())}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    body = {"query": QUERY, "agent_type": "general", "max_tokens": OUTPUT, "cache": False}
    if conversation_id:
        body["conversation_id"] = conversation_id
    response = await client.post(f"{url}/api/v1/{path}", json=body, headers=headers)
    if response.status_code != 200:
        return response.status_code, response.json()["error"]["code"], None
    if path == "stream":
        events = parse_sse(response.text.splitlines())
        return 200, events[-1]["status"], events[0]["message_id"]
    data = response.json()
    return 200, data["status"], data["message_id"]


def test_forty_eight_runs_sharing_client_identifiers_never_pass_a_budget_of_ten(
        users, fake_upstream, upstream_model, live_settings):
    fake_upstream.configure(tokens=OUTPUT, tps=300, prompt_tokens=prompt_tokens(QUERY))
    user = users["user"]
    secret, budget = key_budget(user, 10 * (prompt_tokens(QUERY) * IN_PRICE + OUTPUT * OUT_PRICE))
    conversation = Conversation.objects.create(organization=user.organization, user=user, agent="general",
                                               title="shared")
    shared_request, shared_key = str(uuid.uuid4()), "the-one-key"

    async def fire(urls):
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            calls = []
            for i in range(16):
                url = urls[i % len(urls)]
                calls.append(_run(client, url, secret, request_id=shared_request))
                calls.append(_run(client, url, secret, request_id=shared_request, idempotency_key=shared_key))
                calls.append(_run(client, url, secret, path="stream", request_id=shared_request,
                                  conversation_id=str(conversation.pk)))
            return await asyncio.gather(*calls)

    with instances(2) as urls:
        results = asyncio.run(fire(urls))

    codes = {code for status, code, _ in results if status != 200}
    assert codes <= {"budget_exceeded", "idempotency_key_in_use"}, results
    answered = {message_id for status, _, message_id in results if status == 200}
    records = UsageRecord.objects.filter(api_key__budgets=budget)
    assert 1 <= records.count() <= 10
    assert records.count() == len(answered), "one usage record per answered run, none for a replay"
    assert {str(r.message_id) for r in records} == answered
    assert sum(r.cost for r in records) <= budget.limit_usd
    assert ledger_figures(budget) == (int(sum(r.cost for r in records) * 10**9), 0)
    assert not Message.objects.filter(status="running").exists()
    keyed = [message_id for (status, _, message_id), i in zip(results, range(len(results)), strict=True)
             if i % 3 == 1 and status == 200]
    assert len(set(keyed)) <= 1, "one idempotency key, at most one run"
    assert_reconciled()

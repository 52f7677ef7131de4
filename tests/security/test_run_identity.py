"""A run's identity belongs to the server (Trust I, point 1).

Invariant: every run gets a server-generated id, used by its ledger reservation, its usage record
and its audit event; a client's X-Request-ID is only a correlation label stored beside it. Runs
that share a client id are still separate runs: each is reserved, billed and stored on its own.
"""

import asyncio
import uuid

import httpx
import pytest

from agents.models import Message
from audit.models import AuditEvent
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

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["live_settings"]  # a fixture these tests use


async def _query(client, url, secret, body, request_id):
    response = await client.post(f"{url}/api/v1/query", json=body, headers={
        "Authorization": f"Bearer {secret}", "X-Request-ID": request_id})
    return response.status_code, response.json()


def test_concurrent_runs_sharing_a_client_request_id_are_billed_one_by_one(
        users, fake_upstream, upstream_model, live_settings):
    query, output = "Tell me about identity.", 10
    fake_upstream.configure(tokens=output, tps=200, prompt_tokens=prompt_tokens(query))
    one_run = prompt_tokens(query) * IN_PRICE + output * OUT_PRICE
    secret, budget = key_budget(users["user"], 5 * one_run)
    body = {"query": query, "agent_type": "general", "max_tokens": output, "cache": False}
    shared = str(uuid.uuid4())

    async def fire(urls):
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(_query(client, urls[i % len(urls)], secret, body, shared)
                                          for i in range(20)))

    with instances(2) as urls:
        results = asyncio.run(fire(urls))
    answered = [data for status, data in results if status == 200]
    refused = [data for status, data in results if status != 200]
    assert all(data["error"]["code"] == "budget_exceeded" for data in refused), refused
    assert len(answered) == 5, [status for status, _ in results]
    records = UsageRecord.objects.filter(api_key__budgets=budget)
    assert records.count() == len(answered), "one usage record per answered run"
    assert len({r.request_id for r in records}) == len(answered)
    assert shared not in {r.request_id for r in records}, "the client's id never names a run"
    assert {r.client_request_id for r in records} == {shared}, "the client's id is kept as a label"
    assert sum(r.cost for r in records) <= budget.limit_usd
    assert ledger_figures(budget) == (int(sum(r.cost for r in records) * 10**9), 0)
    assert not Message.objects.filter(status="running").exists()
    runs = AuditEvent.objects.filter(action="agent.run")
    assert sorted(e.metadata["run_id"] for e in runs) == sorted(r.request_id for r in records)
    assert_reconciled()


def test_sequential_reuse_of_a_client_request_id_keeps_ledger_and_records_equal(
        users, fake_upstream, upstream_model, live_settings):
    query, output = "Again and again.", 5
    fake_upstream.configure(tokens=output, tps=0, prompt_tokens=prompt_tokens(query))
    one_run = prompt_tokens(query) * IN_PRICE + output * OUT_PRICE
    secret, budget = key_budget(users["user"], 100 * one_run)
    body = {"query": query, "agent_type": "general", "max_tokens": output, "cache": False}
    shared = str(uuid.uuid4())

    async def fire(url):
        async with httpx.AsyncClient(timeout=60) as client:
            return [await _query(client, url, secret, body, shared) for _ in range(3)]

    with instances(1) as [url]:
        results = asyncio.run(fire(url))
    assert [status for status, _ in results] == [200, 200, 200]
    assert len({data["message_id"] for _, data in results}) == 3
    records = UsageRecord.objects.filter(api_key__budgets=budget)
    assert records.count() == 3
    assert ledger_figures(budget) == (3 * one_run, 0)
    assert_reconciled()

"""Idempotent retries (Trust I, point 2): `Idempotency-Key` on the run endpoints.

Invariant: a replay by the same credential with the same key and body returns the first run's
stored result and never runs or bills again; while the first run is still running the replay is
409, with another body 422; another credential's key of the same name is its own; keys expire
after 24 hours.
"""

import asyncio
import json
from datetime import timedelta

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents.models import Message
from billing.models import UsageRecord
from tests.billing.test_live_budgets import IN_PRICE, OUT_PRICE, key_budget, ledger_figures, prompt_tokens
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)
QUERY = "Say something once."
BODY = {"query": QUERY, "agent_type": "general", "max_tokens": 8, "cache": False}


def post(server, path, secret, body, key=None, **extra_headers):
    headers = {"Authorization": f"Bearer {secret}", **extra_headers}
    if key is not None:
        headers["Idempotency-Key"] = key.encode()  # bytes: a client may send any octets
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)


@pytest.fixture
def upstream(fake_upstream, upstream_model):
    fake_upstream.configure(tokens=8, tps=0, prompt_tokens=prompt_tokens(QUERY))
    return fake_upstream


def test_a_replayed_query_returns_the_first_answer_and_bills_once(asgi_server, users, upstream):
    secret, budget = key_budget(users["user"], 1000 * (prompt_tokens(QUERY) * IN_PRICE + 8 * OUT_PRICE))
    first = post(asgi_server, "/api/v1/query", secret, BODY, key="order-17")
    again = post(asgi_server, "/api/v1/query", secret, BODY, key="order-17")
    assert first.status_code == again.status_code == 200, again.content
    assert again.json() == first.json()
    assert UsageRecord.objects.filter(api_key__budgets=budget).count() == 1
    assert len(upstream.requests) == 1, "the model was asked once"
    assert ledger_figures(budget)[0] == prompt_tokens(QUERY) * IN_PRICE + 8 * OUT_PRICE


def test_a_replay_answers_on_its_own_transport(asgi_server, users, upstream):
    secret = create_api_key(users["user"], "replays").secret
    chat = {"model": "fake-large", "messages": [{"role": "user", "content": QUERY}], "max_tokens": 8}
    first = post(asgi_server, "/v1/chat/completions", secret, chat, key="chat-1")
    again = post(asgi_server, "/v1/chat/completions", secret, chat, key="chat-1")
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]

    streamed = post(asgi_server, "/api/v1/stream", secret, BODY, key="stream-1")
    replayed = post(asgi_server, "/api/v1/stream", secret, BODY, key="stream-1")
    first_events, replay_events = parse_sse(streamed.text.splitlines()), parse_sse(replayed.text.splitlines())
    assert replayed.headers["content-type"].startswith("text/event-stream")
    assert replay_events[0]["message_id"] == first_events[0]["message_id"]
    answer = "".join(e["content"] for e in first_events if e["type"] == "token")
    assert "".join(e["content"] for e in replay_events if e["type"] == "token") == answer
    assert replay_events[-1] == first_events[-1]  # done: the same status, tokens and cost
    assert UsageRecord.objects.count() == 2


def test_a_replay_while_running_is_409_and_another_body_is_422(asgi_server, users, upstream):
    upstream.configure(tokens=200, tps=20)
    secret = create_api_key(users["user"], "slow").secret
    body = {**BODY, "max_tokens": 200}

    async def race():
        async with httpx.AsyncClient(timeout=60) as client:
            headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "slow-1"}
            async with client.stream("POST", f"{asgi_server.url}/api/v1/stream", json=body, headers=headers) as first:
                # Held, not dropped: an abandoned line iterator is finalized by the loop, which
                # closes the response and so cancels the first run before the replay arrives.
                seen, lines = [], first.aiter_lines()
                async for line in lines:
                    seen.append(line)
                    if '"type": "token"' in line:
                        break
                assert '"type": "token"' in seen[-1], f"the first run was not answering: {seen}"
                during = await client.post(f"{asgi_server.url}/api/v1/stream", json=body, headers=headers)
                other = await client.post(f"{asgi_server.url}/api/v1/query", json={**body, "query": "Else."},
                                          headers=headers)
                return during, other

    during, other = asyncio.run(race())
    assert during.status_code == 409, (during.status_code, during.text[:2000])
    assert during.json()["error"]["code"] == "idempotency_key_in_use"
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(upstream.requests) == 1


def test_keys_belong_to_one_credential_and_expire_after_a_day(asgi_server, users, upstream):
    mine, theirs = create_api_key(users["user"], "mine").secret, create_api_key(users["admin"], "theirs").secret
    assert post(asgi_server, "/api/v1/query", mine, BODY, key="same").status_code == 200
    assert post(asgi_server, "/api/v1/query", theirs, BODY, key="same").status_code == 200
    assert UsageRecord.objects.count() == 2, "another credential's key of the same name is its own"
    from agents.models import IdempotencyKey

    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.first().created_at - timedelta(hours=24, seconds=1))
    assert post(asgi_server, "/api/v1/query", mine, BODY, key="same").status_code == 200
    assert UsageRecord.objects.count() == 3, "an expired key runs again"
    assert Message.objects.filter(role="assistant").count() == 3


def test_a_refused_run_leaves_its_key_free_for_the_retry(asgi_server, users, upstream):
    secret, budget = key_budget(users["user"], 1)  # one nano-dollar: nothing fits
    refused = post(asgi_server, "/api/v1/query", secret, BODY, key="retry-me")
    assert refused.status_code == 402
    budget.limit_usd = 1
    budget.save()
    assert post(asgi_server, "/api/v1/query", secret, BODY, key="retry-me").status_code == 200


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "a\tb"])
def test_a_malformed_idempotency_key_is_400(asgi_server, users, upstream, key):
    secret = create_api_key(users["user"], "bad keys").secret
    response = post(asgi_server, "/api/v1/query", secret, BODY, key=key)
    assert response.status_code == 400, response.content
    assert json.loads(response.content)["error"]["code"] == "invalid_idempotency_key"
    assert not UsageRecord.objects.exists()


def test_a_run_whose_key_cannot_be_bound_is_closed_and_its_key_freed(asgi_server, users, upstream, monkeypatch):
    """The database fails between the run's reservation and binding it to its key: the request fails,
    and neither the run (its reservation, a running answer) nor the key is left held until they expire."""
    from django.db import OperationalError

    from agents import idempotency

    secret, budget = key_budget(users["user"], 1000 * (prompt_tokens(QUERY) * IN_PRICE + 8 * OUT_PRICE))
    bind = idempotency.bind

    def failing_once(claimed, message_id):
        monkeypatch.setattr(idempotency, "bind", bind)
        raise OperationalError("the connection dropped")

    monkeypatch.setattr(idempotency, "bind", failing_once)
    failed = post(asgi_server, "/api/v1/query", secret, BODY, key="bind-1")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "service_unavailable"
    assert list(Message.objects.filter(role="assistant").values_list("status", flat=True)) == ["error"]
    assert ledger_figures(budget) == (0, 0), "nothing spent, nothing still reserved"
    assert not upstream.requests, "no model was asked for the failed request"
    again = post(asgi_server, "/api/v1/query", secret, BODY, key="bind-1")
    assert again.status_code == 200, again.content
    assert ledger_figures(budget)[0] == prompt_tokens(QUERY) * IN_PRICE + 8 * OUT_PRICE

"""A model's answer with a character PostgreSQL cannot store is stored, not lost (agents.actions.runs.storable).

PostgreSQL stores no NUL in a text or JSON column, and no UTF-16 surrogate without its partner (which
a model's JSON may escape, and Python then decodes). A model (or a tool) may still write one, and
the closing that stored it verbatim failed as a whole: a 500 for a non-streamed answer, a cut
stream, the run left for recovery, its audit event late. The client gets the answer as the model
wrote it; the stored copy has U+FFFD in each such character's place.
"""

import asyncio
import json

import httpx
import pytest
import websockets

from agents.models import Message
from billing.models import UsageRecord
from tests.reconciled import assert_reconciled
from tests.security.test_bad_input import recv_json, ws_url
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("unstorable", ["\x00", "\ud800"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_postgresql_cannot_store_as_written_is_answered_and_stored(asgi_server, user_key, fake_upstream,
                                                                            upstream_model, stream, unstorable):
    import openai

    fake_upstream.configure(reply=f"before{unstorable}after")
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    asked = {"model": upstream_model, "messages": [{"role": "user", "content": "Hi"}]}

    if stream:
        said = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            **asked, stream=True) if chunk.choices)
    else:
        said = client.chat.completions.create(**asked).choices[0].message.content

    assert said == f"before{unstorable}after"
    answer = Message.objects.get(role="assistant")
    assert (answer.status, answer.content) == ("complete", "before\ufffdafter")
    assert UsageRecord.objects.get(message_id=answer.pk).status == "complete"
    assert_reconciled()


@pytest.mark.parametrize("unstorable", ["\x00", "\ud800"])
def test_relays_own_stream_carries_such_an_answer_whole(asgi_server, user_key, fake_upstream, upstream_model,
                                                        unstorable):
    fake_upstream.configure(reply=f"before{unstorable}after")

    response = httpx.post(f"{asgi_server.url}/api/v1/stream", headers={"Authorization": f"Bearer {user_key}"},
                          json={"query": "Hi", "agent_type": "general", "model": upstream_model}, timeout=30)

    events = parse_sse(response.iter_lines())
    assert "".join(event["content"] for event in events if event["type"] == "token") == f"before{unstorable}after"
    assert events[-1]["status"] == "complete"
    assert Message.objects.get(role="assistant").content == "before\ufffdafter"
    assert_reconciled()


@pytest.mark.parametrize("unstorable", ["\x00", "\ud800"])
def test_the_websocket_carries_such_an_answer_whole(asgi_server, user_key, fake_upstream, upstream_model, unstorable):
    fake_upstream.configure(reply=f"before{unstorable}after")

    async def scenario():
        async with websockets.connect(ws_url(asgi_server)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": user_key}))
            assert (await recv_json(ws))["type"] == "authenticated"
            await ws.send(json.dumps({"type": "query", "query": "Hi", "agent_type": "general", "model": upstream_model}))
            events = [await recv_json(ws)]
            while events[-1]["type"] not in ("done", "error"):
                events.append(await recv_json(ws))
            return events

    events = asyncio.run(scenario())
    assert "".join(event["content"] for event in events if event["type"] == "token") == f"before{unstorable}after"
    assert events[-1]["status"] == "complete"
    assert Message.objects.get(role="assistant").content == "before\ufffdafter"
    assert_reconciled()

"""A stream served by Relay's handler asks its model before its response goes out (agents.api.sse.event_stream).

An upstream thinks for tens of milliseconds or more before its first token: asked while the
middleware and the server send the response's headers, instead of after, its first token
reaches the client that much sooner (bench/stream_latency.py). The run is still closed, once,
whichever way the response ends.
"""

import asyncio
import json

import pytest

from agents import runner
from agents.api import sse
from agents.models import Message
from agents.providers.catalog import close_providers
from agents.providers.openai_compat import OpenAICompatibleProvider
from billing.models import UsageRecord
from relay.eventloop import unfinished
from relay.eventloop.db import db
from tests.reconciled import assert_reconciled

pytestmark = pytest.mark.django_db(transaction=True)


def _request(users, model: str) -> runner.RunRequest:
    return runner.new_request(users["user"], None, {"agent_type": "general", "model": model, "query": "Hello there",
                                                    "cache": False})


def _events(frames: list[bytes]) -> list[dict]:
    return [json.loads(line[len(b"data: "):]) for frame in frames for line in frame.split(b"\n")
            if line.startswith(b"data: ")]


@pytest.fixture
def asked(monkeypatch):
    """The model calls begun so far (the provider's stream created)."""
    calls, original = [], OpenAICompatibleProvider.stream

    def stream(self, *args, **kwargs):
        calls.append(self.base_url)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OpenAICompatibleProvider, "stream", stream)
    return calls


def test_the_model_is_asked_before_the_response_is_returned(users, fake_upstream, upstream_model, asked):
    async def scenario():
        await runner.collect(await runner.prepare(_request(users, upstream_model)))  # a connection to reuse
        asked.clear()
        async with unfinished.request_scope():  # as Relay's handler serves a request
            run = await runner.prepare(_request(users, upstream_model))
            response = await sse.event_stream(run, sse.RelayFraming())
            asked_first = list(asked)  # before this test yields to the loop: only the view's own turns count
            frames = [frame async for frame in response]
        await close_providers()
        return run, asked_first, frames

    run, asked_first, frames = asyncio.run(scenario())
    assert asked_first, "the model was asked only once the response was read"
    events = _events(frames)
    assert [event["type"] for event in events][:1] == ["start"] and events[-1]["type"] == "done"
    assert "".join(event["content"] for event in events if event["type"] == "token")
    assert len(fake_upstream.requests) == 2
    assert Message.objects.get(pk=run.message_id).status == Message.Status.COMPLETE
    assert UsageRecord.objects.filter(request_id=run.request.run_id).count() == 1
    assert_reconciled()


def test_a_response_never_read_has_its_run_closed_when_the_request_ends(users, fake_upstream, upstream_model):
    """The client is gone before the server sends anything: the request's end closes the pump,
    which cuts the model call off and closes the run, once, with nothing left reserved."""
    fake_upstream.configure(ttft=30)

    async def scenario():
        async with unfinished.request_scope():
            run = await runner.prepare(_request(users, upstream_model))
            await sse.event_stream(run, sse.RelayFraming())
            await asyncio.to_thread(fake_upstream.wait_for_requests, 1, 10)
        status = await db(lambda: Message.objects.get(pk=run.message_id).status)()  # as the request ended
        await close_providers()
        return run, status

    run, status = asyncio.run(scenario())
    assert status == Message.Status.CANCELLED
    assert UsageRecord.objects.get(request_id=run.request.run_id).output_tokens == 0
    assert fake_upstream.wait_for(lambda reqs: reqs and all(r.client_disconnected for r in reqs), timeout=10)
    assert_reconciled()

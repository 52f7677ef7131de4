"""The ASGI handler's marks for work held behind answers (relay.eventloop.later): a model call is
marked from the arrival of its body until its response ends, a stream until its first event past
`start`; other requests are not marked."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents.actions.endpoints import create_endpoint
from billing.models import ModelPrice
from relay.eventloop import later


def _scope(method: str, path: str, *headers: tuple[bytes, bytes]) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": [(b"host", b"testserver"), *headers],
            "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
            "scheme": "http", "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0"}}


def _through_the_handler(path: str) -> list[tuple[str, int]]:
    """(ASGI message type, model calls not yet answered) as each message of a GET of path is sent."""
    from relay.asgi import application  # sets Django up as the server does

    seen = []

    async def scenario():
        later.serve_here()
        gate = later._gates[asyncio.get_running_loop()]
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.Event().wait()  # the client stays: the handler stops listening when it is done

        async def send(message):
            seen.append((message["type"], gate.starting))

        await application(_scope("GET", path), receive, send)
        assert gate.starting == 0

    asyncio.run(scenario())
    return seen


@pytest.mark.django_db
def test_the_handler_marks_a_model_call_until_its_response_ends():
    seen = _through_the_handler("/v1/models")  # an async API view: refused 401 here, marked all the same
    assert seen[0] == ("http.response.start", 1)  # headers alone are not the answer
    assert seen[-1] == ("http.response.body", 0)  # its last body message ends the mark


@pytest.mark.django_db
def test_a_model_call_is_marked_only_once_its_body_has_arrived():
    """A client sending its body slowly, before any authentication, would otherwise keep every
    closing of the instance waiting for the whole hold."""
    from relay.asgi import application

    async def scenario():
        later.serve_here()
        gate = later._gates[asyncio.get_running_loop()]
        chunks = [{"type": "http.request", "body": b'{"model": ', "more_body": True}]

        waiting_for_more = asyncio.Event()

        async def receive():
            if chunks:
                return chunks.pop(0)
            waiting_for_more.set()
            await asyncio.Event().wait()  # the rest of the body never comes

        async def send(message):
            pass

        scope = _scope("POST", "/v1/chat/completions", (b"content-type", b"application/json"),
                       (b"content-length", b"100"))
        task = asyncio.create_task(application(scope, receive, send))
        await waiting_for_more.wait()
        assert not task.done()  # the handler is reading the body
        starting = gate.starting
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return starting

    assert asyncio.run(scenario()) == 0


@pytest.mark.django_db
def test_other_requests_are_not_marked():
    # A page, or a read of the answer just given, must not hold back the commit it is about to read.
    assert {starting for _, starting in _through_the_handler("/healthz")} == {0}


@pytest.mark.django_db(transaction=True)
def test_an_sse_stream_marks_its_answer_once_the_model_has_answered(asgi_server, users, fake_upstream, monkeypatch):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    secret = create_api_key(users["user"], "marks").secret
    marks, mark = [], later.answer_started
    monkeypatch.setattr(later, "answer_started", lambda: (marks.append(len(fake_upstream.requests)), mark()))

    with httpx.stream("POST", asgi_server.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {secret}"},
                      json={"model": "fake-large", "stream": True,
                            "messages": [{"role": "user", "content": "Say hello."}]}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]

    assert lines[-1] == "data: [DONE]"
    assert marks and marks[0] == 1  # the first mark came after the model was asked, not with the role chunk

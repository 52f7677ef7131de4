"""Work held behind answers (relay.eventloop.later): a closing's commit waits while a request of its
loop has not answered yet (its response has not ended, or a stream has sent no event past its
start), and no longer than BEHIND_ANSWERS_AT_MOST; a turn waiting for it, and a
draining server, start it at once. Other later work never waits. The events asserted are the
order of things, not their timing."""

from __future__ import annotations

import asyncio
import gc
import warnings
from decimal import Decimal

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents.actions.endpoints import create_endpoint
from billing.models import ModelPrice
from relay.eventloop import later


def _serving(scenario):
    async def run():
        later.serve_here()  # as relay.serve does
        return await scenario()

    return asyncio.run(run())


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_held_work_starts_once_no_request_is_before_its_answer(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)  # the cap plays no part here
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        first, second = later.answering(), later.answering()
        assert later.later(closing(), behind_answers=True)
        await _turns()
        events.append("first answered")
        first()
        first()  # idempotent: one request, one mark
        await _turns()
        events.append("second answered")
        second()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["first answered", "second answered", "closing"]


def test_other_later_work_does_not_wait(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)
    events = []

    async def release():
        events.append("released")

    async def scenario():
        answered = later.answering()
        assert later.later(release())  # a routing release: capacity, not a commit
        await _turns()
        events.append("answered")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["released", "answered"]


def test_held_work_waits_no_longer_than_the_cap(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 0.01)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()  # a request that never sends (a slow model, say)
        assert later.later(closing(), behind_answers=True)
        await asyncio.wait_for(_until(lambda: events), 10)
        events.append("answered")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "answered"]


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_the_turn_that_waits_for_a_closing_starts_it(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        answered = later.answering()  # the follow-up turn itself: before its first byte
        assert later.later(closing(), key="conversation-1", behind_answers=True)
        await asyncio.wait_for(later.settled("conversation-1"), 10)
        events.append("settled")
        answered()
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["closing", "settled"]


def test_a_draining_server_starts_held_work(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        later.answering()  # a request still starting when the server stops
        assert later.later(closing(), behind_answers=True)
        assert await asyncio.wait_for(later.drain(10), 10) == 0

    _serving(scenario)
    assert events == ["closing"]


def test_held_work_cancelled_while_waiting_never_runs_and_leaves_no_warning(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():  # cancelled while held, as drain cancels what outlives its timeout
        later.answering()
        assert later.later(closing(), behind_answers=True)
        await _turns()
        (task,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        _serving(scenario)
        gc.collect()
    assert events == []
    assert not [w for w in warned if "never awaited" in str(w.message)]


def test_outside_a_serving_loop_nothing_is_marked_or_held():
    async def scenario():
        answered = later.answering()
        answered()

        async def closing():
            return None

        work = closing()
        assert not later.later(work, behind_answers=True)  # the caller awaits it itself
        await work

    asyncio.run(scenario())


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

        scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"host", b"testserver")],
                 "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
                 "scheme": "http", "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0"}}
        await application(scope, receive, send)
        assert gate.starting == 0

    asyncio.run(scenario())
    return seen


@pytest.mark.django_db
def test_the_handler_marks_a_model_call_until_its_response_ends():
    seen = _through_the_handler("/v1/models")  # an async API view: refused 401 here, marked all the same
    assert seen[0] == ("http.response.start", 1)  # headers alone are not the answer
    assert seen[-1] == ("http.response.body", 0)  # its last body message ends the mark


@pytest.mark.django_db
def test_other_requests_are_not_marked():
    # A page, or a read of the answer just given, must not hold back the commit it is about to read.
    assert {starting for _, starting in _through_the_handler("/healthz")} == {0}


def test_held_work_cancelled_before_it_starts_leaves_no_warning(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)

    async def closing():
        return None

    async def scenario():
        later.answering()
        assert later.later(closing(), behind_answers=True)
        (task,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        task.cancel()  # before its first step
        await asyncio.gather(task, return_exceptions=True)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        _serving(scenario)
        gc.collect()  # an unawaited coroutine warns when it is collected
    assert not [w for w in warned if "never awaited" in str(w.message)]


def test_work_held_after_the_drain_began_does_not_wait(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)
    events = []

    async def closing():
        events.append("closing")

    async def scenario():
        later.answering()  # a request the shutdown has not finished
        assert await later.drain(10) == 0
        assert later.later(closing(), behind_answers=True)  # a closing that request makes meanwhile
        await _turns()
        events.append("a moment later")
        assert await asyncio.wait_for(later.drain(10), 10) == 0

    _serving(scenario)
    assert events == ["closing", "a moment later"]


def test_a_streams_first_event_ends_its_mark(monkeypatch):
    monkeypatch.setattr(later, "BEHIND_ANSWERS_AT_MOST", 60.0)
    events = []

    async def closing():
        events.append("closing")

    async def request():  # the handler's mark, then the stream's first token (agents.api.sse)
        answered = later.answering()
        await _turns()
        events.append("first token")
        later.answer_started()
        await _turns(20)
        events.append("stream ends")
        answered()

    async def scenario():
        task = asyncio.create_task(request())  # its own context, as each request's
        await asyncio.sleep(0)
        assert later.later(closing(), behind_answers=True)
        await task
        assert await later.drain(10) == 0

    _serving(scenario)
    assert events == ["first token", "closing", "stream ends"]


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

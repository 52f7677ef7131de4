"""On the server's loop (relay.serve) a successful attempt's routing release goes after the answer,
held with the closings behind the loop's answers (agents.router.calls), and is still made exactly once; a failure is
released before the caller goes on, so the next pick sees the deployment's new health."""

from __future__ import annotations

import asyncio

import pytest

from agents.providers.base import ChatRequest
from agents.providers.catalog import DeploymentChoice, close_providers
from agents.router import calls, snapshot
from relay.eventloop import later
from tests.router.conftest import model

pytestmark = pytest.mark.django_db(transaction=True)


def _deployed(fake_upstream, **policy):
    only = DeploymentChoice(key="31", name="only", base_url=fake_upstream.base_url, upstream_model="fake-large")
    return model(only, name="fake-large", **policy)


def _ask():
    return ChatRequest(messages=[{"role": "user", "content": "Say hello."}], model="fake-large")


def test_on_the_servers_loop_a_success_is_released_after_the_answer_behind_the_loops_answers(
        states, clock, fake_upstream, settings):
    settings.RELAY_CLOSING_QUIET_MS = settings.RELAY_CLOSING_HOLD_MS = 60_000  # held until the drain lets it go
    chosen = _deployed(fake_upstream)

    async def scenario():
        later.serve_here()  # as relay.serve does
        answer = [event async for event in calls.stream(chosen, _ask())]
        # Not held, the release would end within this wait (one Redis or in-process step).
        done, _ = await asyncio.wait(later._tasks[asyncio.get_running_loop()], timeout=0.5)
        held = snapshot(chosen)[0]["in_flight"], later.pending(), len(done)
        assert await later.drain(10) == 0
        await close_providers()
        return answer, held

    answer, held = asyncio.run(scenario())
    assert answer and held == (1, 1, 0)  # answered; its lease still counted, its release held
    [row] = snapshot(chosen)
    assert (row["in_flight"], row["state"]) == (0, "closed") and row["ttft_avg"] is not None  # released, once


def test_on_the_servers_loop_a_failure_is_released_before_the_caller_goes_on(states, clock, fake_upstream):
    chosen = _deployed(fake_upstream, allowed_fails=1, cooldown=30.0, num_retries=0)
    fake_upstream.fail_next(1, status=500)

    async def scenario():
        later.serve_here()
        with pytest.raises(calls.ModelUnavailable):
            async for _ in calls.stream(chosen, _ask()):
                pass
        seen = snapshot(chosen)[0], later.pending()  # as the caller sees it, before it tries anything else
        assert await later.drain(10) == 0
        await close_providers()
        return seen

    row, pending = asyncio.run(scenario())
    assert (row["in_flight"], row["state"], pending) == (0, "open", 0)

"""An instance whose connections to an upstream are all in use answers 503 `service_unavailable`
without counting it against the deployment: the deployment answered every request it was sent,
and cooling it down would turn one busy instance into an outage for the whole cluster."""

from __future__ import annotations

import asyncio

import pytest

from agents.providers import catalog
from agents.providers.base import ChatRequest, TextDelta, UpstreamBusy
from agents.providers.catalog import DeploymentChoice, close_providers
from agents.providers.openai_compat import OpenAICompatibleProvider
from agents.router import calls, snapshot
from tests.router.conftest import model

pytestmark = pytest.mark.django_db(transaction=True)


def _ask(text="Say hello."):
    return ChatRequest(messages=[{"role": "user", "content": text}], model="fake-large")


def _one_connection(fake_upstream, monkeypatch, *, waited_for: float, rpm_limit: int | None = None, **policy):
    """A deployment whose provider may hold one connection to the upstream, waiting `waited_for` s for it.
    One failure would cool it down: a test fails if the busy instance is counted as one."""
    deployment = DeploymentChoice(key="41", name="only", base_url=fake_upstream.base_url, upstream_model="fake-large",
                                  rpm_limit=rpm_limit)
    provider = OpenAICompatibleProvider("only", fake_upstream.base_url, None, max_retries=0,
                                        connect_timeout=waited_for, max_connections=1)
    monkeypatch.setitem(catalog._providers, (deployment.base_url, deployment.api_key), provider)
    return model(deployment, name="fake-large", allowed_fails=1, cooldown=30.0, num_retries=0, **policy)


@pytest.fixture
def one_connection(fake_upstream, monkeypatch):
    return _one_connection(fake_upstream, monkeypatch, waited_for=0.2)


def test_a_full_connection_pool_is_503_and_not_the_deployments_failure(states, clock, fake_upstream, one_connection):
    fake_upstream.configure(stall_after=1, stall=10)  # the first answer holds its connection

    async def scenario():
        holding = calls.stream(one_connection, _ask("Hold the line."))
        first = await anext(holding)
        try:
            with pytest.raises(calls.ModelUnavailable) as refused:
                async for _ in calls.stream(one_connection, _ask()):
                    pass
            seen = snapshot(one_connection)[0]
        finally:
            await holding.aclose()  # the held connection is hung up and its slot given back
        fake_upstream.configure(stall_after=None, stall=0.0)
        after = [event async for event in calls.stream(one_connection, _ask())]
        await close_providers()
        return first, refused.value.error, seen, after

    first, error, seen, after = asyncio.run(scenario())
    assert isinstance(first, TextDelta)
    assert isinstance(error, UpstreamBusy)
    assert (error.status, error.code, error.retry_after) == (503, "service_unavailable", 1.0)
    assert (seen["state"], seen["in_flight"]) == ("closed", 1)  # not cooled down; the held call is still out
    assert any(isinstance(event, TextDelta) for event in after)  # the slot came back with the hang-up
    [row] = snapshot(one_connection)
    assert (row["state"], row["in_flight"]) == ("closed", 0)


@pytest.fixture
def one_slow_connection(fake_upstream, monkeypatch):
    """The one connection waited for up to 10 s, the first token for 0.5 s: far below that wait."""
    return _one_connection(fake_upstream, monkeypatch, waited_for=10, first_token_timeout=0.5)


def test_the_first_token_clock_starts_when_the_call_has_a_connection(states, clock, fake_upstream,
                                                                      one_slow_connection):
    # Control: calls._Attempt starts the first-token timeout at the provider's on_connection. When it
    # ran from the attempt's start, a call still waiting for this instance's own pool timed out after
    # 0.5 s as `upstream_timeout` and cooled the healthy deployment down (allowed_fails=1).
    fake_upstream.configure(stall_after=1, stall=10)  # every answer holds its connection after one chunk

    async def scenario():
        holding = calls.stream(one_slow_connection, _ask("Hold the line."))
        await anext(holding)
        second = calls.stream(one_slow_connection, _ask())
        waiting = asyncio.create_task(anext(second))
        await asyncio.sleep(1.0)  # twice the first-token timeout spent waiting for the pool
        waited_out = waiting.done() and waiting.exception()
        await holding.aclose()  # the slot is given back: the waiting call goes out now
        first = await waiting
        in_flight = snapshot(one_slow_connection)[0]
        await second.aclose()
        await close_providers()
        return waited_out, first, in_flight

    waited_out, first, in_flight = asyncio.run(scenario())
    assert not waited_out, f"the pool wait was counted against the first-token timeout: {waited_out!r}"
    assert isinstance(first, TextDelta)  # its own 0.5 s began with its connection
    assert (in_flight["state"], in_flight["in_flight"]) == ("closed", 1)
    [row] = snapshot(one_slow_connection)
    assert (row["state"], row["in_flight"]) == ("closed", 0)


def test_a_call_refused_for_a_full_pool_is_not_counted_in_the_deployments_minute(states, clock, fake_upstream,
                                                                                  monkeypatch):
    # Control: calls._Attempt releases with sent=False until the provider's on_connection. Counted,
    # the refused call left the deployment's two requests of the minute used by one that went out.
    limited = _one_connection(fake_upstream, monkeypatch, waited_for=0.2, rpm_limit=2)
    fake_upstream.configure(stall_after=1, stall=10)

    async def scenario():
        holding = calls.stream(limited, _ask("Hold the line."))
        await anext(holding)
        with pytest.raises(calls.ModelUnavailable) as refused:
            async for _ in calls.stream(limited, _ask()):
                pass
        await holding.aclose()
        fake_upstream.configure(stall_after=None, stall=0.0)
        after = [event async for event in calls.stream(limited, _ask())]  # the minute's second request
        await close_providers()
        return refused.value.error, after

    error, after = asyncio.run(scenario())
    assert isinstance(error, UpstreamBusy)
    assert any(isinstance(event, TextDelta) for event in after)


class _SilentProvider:
    """A provider that never answers, and never reports a connection."""

    name = "silent"

    def __init__(self, reports_connection: bool):
        self.reports_connection = reports_connection
        self.calls = 0

    async def stream(self, request, *, on_connection=None):
        self.calls += 1
        await asyncio.Event().wait()
        yield  # pragma: no cover  (an async generator that never gets here)


def _silent(fake_upstream, monkeypatch, *, reports_connection: bool, **policy):
    deployment = DeploymentChoice(key="42", name="silent", base_url=fake_upstream.base_url, upstream_model="fake-large",
                                  rpm_limit=1)
    provider = _SilentProvider(reports_connection)
    monkeypatch.setitem(catalog._providers, (deployment.base_url, deployment.api_key), provider)
    return provider, model(deployment, name="fake-large", cooldown=30.0, num_retries=0, first_token_timeout=0.1,
                           **policy)


def _refusal(silent):
    async def scenario():
        with pytest.raises(calls.ModelUnavailable) as refused:
            await asyncio.wait_for(anext(calls.stream(silent, _ask())), 10)
        return refused.value

    return asyncio.run(scenario())


def test_a_provider_that_says_it_reports_its_connection_and_never_does_still_times_out(states, clock, fake_upstream,
                                                                                       monkeypatch):
    # Control: calls._Attempt arms the first-token clock at CONNECTION_WAIT_CEILING + the timeout before
    # on_connection. Unarmed until then, this call waited forever (the test's 10 s bound fails it).
    monkeypatch.setattr(calls, "CONNECTION_WAIT_CEILING", 0.2)
    _, silent = _silent(fake_upstream, monkeypatch, reports_connection=True, allowed_fails=1)

    error = _refusal(silent).error

    assert (error.code, error.status) == ("upstream_timeout", 504)
    [row] = snapshot(silent)
    assert row["state"] == "open"  # a deployment that never answers is one that failed


def test_a_provider_that_does_not_report_its_connection_is_counted_in_the_minute(states, clock, fake_upstream,
                                                                                  monkeypatch):
    # Control: calls._Attempt takes such a provider's call as sent from its start. Taken as never sent (it
    # never reported a connection), each call gave its request back and rpm_limit=1 let every one through.
    provider, silent = _silent(fake_upstream, monkeypatch, reports_connection=False, allowed_fails=5)

    timed_out, limited = _refusal(silent), _refusal(silent)

    assert (timed_out.error.code, timed_out.error.status) == ("upstream_timeout", 504)  # 0.1 s from its start
    assert (limited.reason, limited.error.code) == ("limits", "rate_limited")  # the minute's one request was used
    assert provider.calls == 1

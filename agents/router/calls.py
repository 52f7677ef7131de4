"""One model call across the model's deployments: pick, stream, and retry elsewhere before the first event.

`stream(model, request, tokens=...)` yields the provider events of one upstream call (TextDelta,
ToolCallRequest, Usage, Finish). Which deployment answers is the router's choice
(`agents.router.acquire`); every attempt is released with its outcome, which is what moves the
deployment's health (cooldown after `allowed_fails`, Retry-After) for the whole cluster.

A failure before the first event is tried again on another deployment, up to the model's
`num_retries`; when every healthy deployment has failed this request, a transient failure
(stale keep-alive, one 5xx) may go back to one of them after a short pause. When nothing is
left, `ModelUnavailable` tells the runner to walk the model's fallbacks. After the first event
nothing is switched: the caller has already passed it on, so an error then ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

from agents import router
from agents.providers.base import (
    ChatRequest,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    ToolCallRequest,
    UpstreamBusy,
    Usage,
)
from relay.eventloop.later import later

logger = logging.getLogger(__name__)

# Upstream answers that are the request's fault, not the deployment's: retrying elsewhere would
# fail the same way, and they must not cool a healthy deployment down.
CALLER_ERRORS = frozenset({"bad_request", "context_window_exceeded"})
RETRY_PAUSE = 0.2  # seconds, at most, before a deployment that already failed this request is asked again
# How long a call may wait for this instance's own connection before its first-token clock runs anyway.
# A provider that reports its connection bounds that wait itself (OpenAICompatibleProvider: its connect
# timeout, 5 s by default); this ceiling holds if one never calls on_connection, so no call waits unbounded.
CONNECTION_WAIT_CEILING = 30.0


class ModelUnavailable(Exception):
    """No deployment of the model could answer before its first event: the runner tries a fallback."""

    def __init__(self, model: str, error: ProviderError, reason: str):
        super().__init__(error.message)
        self.model = model
        self.error = error
        self.reason = reason  # "error", "cooldown", "limits"


def _unavailable(model, none: router.NoDeployment, last: ProviderError | None) -> ModelUnavailable:
    if last is not None:
        return ModelUnavailable(model.name, last, "error")
    if none.reason == "limits":
        error = ProviderError("rate_limited", f"every deployment of {model.name} is at its rate limit", 429)
    else:
        error = ProviderError("upstream_unavailable", f"no deployment of {model.name} is available", 503)
    error.retry_after = none.retry_after
    return ModelUnavailable(model.name, error, none.reason)


async def stream(model, request: ChatRequest, *, tokens: int = 0, ahead: router.Ahead | None = None) -> AsyncIterator:
    """The events of one call to `model` (see the module docstring); raises ModelUnavailable or,
    after the first event, the ProviderError that cut the stream. `ahead`: the first attempt's
    deployment, acquired by the caller beforehand (agents.runner, while the run's opening commits)."""
    policy = model.policy
    tried: set[str] = set()
    last: ProviderError | None = None
    for attempt in range(policy.num_retries + 1):
        try:
            if attempt == 0 and ahead is not None:
                pick = await ahead.take()
            else:
                pick = await router.acquire(model, exclude=frozenset(tried), tokens=tokens)
        except router.NoDeployment as none:
            if none.reason != "exhausted" or last is None or not last.retryable:
                raise _unavailable(model, none, last) from None
            # Every healthy deployment failed this request once and the failure may pass: ask again.
            tried.clear()
            await asyncio.sleep(_pause(last, attempt))
            try:
                pick = await router.acquire(model, tokens=tokens)
            except router.NoDeployment as still:
                raise _unavailable(model, still, last) from None
        tried.add(pick.deployment.key)
        attempt_stream = _Attempt(pick, replace(request, model=pick.deployment.upstream_model))
        try:
            first = await attempt_stream.first_event(policy.first_token_timeout)
        except ProviderError as failure:
            if failure.code in CALLER_ERRORS:
                raise
            last = failure
            continue
        async with aclosing(attempt_stream.rest(first)) as events:
            async for event in events:
                yield event
        return
    raise ModelUnavailable(model.name, last, "error")


def _pause(last: ProviderError, attempt: int) -> float:
    if last.retry_after is not None:
        return min(last.retry_after, RETRY_PAUSE)
    return RETRY_PAUSE * random.uniform(0.25, 1.0) * (attempt + 1) / 2


class _Attempt:
    """One deployment's stream, released exactly once with what happened to it."""

    def __init__(self, pick, request: ChatRequest):
        self.pick = pick
        provider = pick.deployment.provider()
        # A provider that does not say when it holds a connection is taken to have sent the call at once:
        # its first-token clock runs from the start, and the deployment's minute keeps its count.
        self.reports_connection = getattr(provider, "reports_connection", False)
        self.source = provider.stream(request, on_connection=self._connected if self.reports_connection else None)
        self.started = time.monotonic()
        self.ttft: float | None = None
        self._first_event_clock: asyncio.Timeout | None = None
        self._first_event_within = 0.0
        # Until then nothing was sent: the deployment's minute gets its count back.
        self.connected = not self.reports_connection
        self.output_tokens = 0
        self.reported_tokens: int | None = None

    def _connected(self) -> None:
        # The deployment's time starts here. Before it the call waited for this instance's own pool
        # (bounded by the provider's connect timeout, then UpstreamBusy, neutral): counted against the
        # first-token timeout, a busy instance with a short one cooled a healthy deployment down.
        self.started, self.connected = time.monotonic(), True
        if self._first_event_clock is not None:
            self._first_event_clock.reschedule(asyncio.get_running_loop().time() + self._first_event_within)

    async def first_event(self, timeout: float):
        """The first event within `timeout` of the call's connection, or a ProviderError (the attempt
        released as a failure, or neutral for the caller's)."""
        self._first_event_within = timeout
        # Moved to `timeout` after the connection by _connected; the ceiling if a provider that says it reports
        # its connection never does.
        self._first_event_clock = asyncio.timeout(CONNECTION_WAIT_CEILING + timeout if self.reports_connection
                                                  else timeout)
        try:
            async with self._first_event_clock:
                first = await anext(self.source)
        except TimeoutError:
            await self._close(router.Outcome.FAILURE)
            raise ProviderError("upstream_timeout", f"no answer from upstream within {timeout:g} s", 504,
                                retryable=True) from None
        except StopAsyncIteration:  # a provider always ends with Finish; an empty stream is a cut one
            await self._close(router.Outcome.FAILURE)
            raise ProviderError("upstream_error", "upstream stream ended before completion", 502) from None
        except UpstreamBusy:  # this instance's connections to it are all in use: not the deployment's fault
            await self._close(router.Outcome.NEUTRAL)
            raise
        except ProviderError as failure:
            caller = failure.code in CALLER_ERRORS
            await self._close(router.Outcome.NEUTRAL if caller else router.Outcome.FAILURE,
                              retry_after=failure.retry_after)
            raise
        except BaseException:  # cancelled (the client left) or a bug: not the deployment's fault
            await asyncio.shield(self._close(router.Outcome.NEUTRAL))
            raise
        self.ttft = time.monotonic() - self.started
        return first

    async def rest(self, first):
        outcome = router.Outcome.NEUTRAL
        try:
            self._count(first)
            yield first
            async for event in self.source:
                self._count(event)
                yield event
            outcome = router.Outcome.SUCCESS
        except ProviderError:
            outcome = router.Outcome.FAILURE  # cut mid-stream: counts against the deployment, never switched
            raise
        finally:
            await asyncio.shield(self._close(outcome))

    def _count(self, event) -> None:
        if isinstance(event, TextDelta | ToolCallDelta):
            self.output_tokens += event.tokens
        elif isinstance(event, Usage):
            self.reported_tokens = event.output_tokens
        elif isinstance(event, ToolCallRequest):
            self.output_tokens += 1

    async def _close(self, outcome, retry_after: float | None = None) -> None:
        await self.source.aclose()
        tokens = self.reported_tokens if self.reported_tokens is not None else self.output_tokens
        release = self._release(outcome, tokens, retry_after)
        # A success moves nothing the caller's next step depends on: its release goes after the
        # answer, held with the closings behind the loop's answers (relay.eventloop.later), so its
        # Redis round trip is off the answer's path (an idle plain request: -0.16 to -0.43 ms,
        # bench/README.md); its lease and counts stay a few ms longer, RELAY_CLOSING_HOLD_MS at most.
        # A failure is released before the next attempt picks, so that pick sees the deployment's new health.
        if outcome is router.Outcome.SUCCESS and later(release, "router release", behind_answers=True):
            return
        await release

    async def _release(self, outcome, tokens: int, retry_after: float | None) -> None:
        try:
            await router.release(self.pick, outcome=outcome, ttft=self.ttft, tokens=tokens,
                                 retry_after=retry_after, sent=self.connected)
        except Exception:  # release never should; a run is not failed for routing bookkeeping
            logger.exception("releasing deployment %s failed", self.pick.deployment.name)

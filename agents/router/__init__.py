"""Which deployment of a model gets the next attempt: cluster-wide routing, health and limits.

`acquire` picks a deployment of a catalog model (agents.providers.catalog.ModelChoice) and takes an
in-flight lease; `release` returns it with the attempt's outcome. The shared state (Redis, or
in-process without it: agents.router.state) is changed atomically in one round trip per call, so
in-flight counts, rpm/tpm limits and the circuit breaker hold across every instance. The rules are
in agents.router.state_base; the call loop that uses this is agents.router.calls.

Time is `clock()` (tests replace it): every window, expiry and cooldown uses its value.

When Redis cannot be reached, routing must not fail a run: `acquire` falls back to a weighted
random choice among the model's deployments without shared state (no limits, breaker or lease
for that attempt), `release` and `snapshot` log and go on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agents.router import metrics
from agents.router.leases import LeaseKeeper
from agents.router.state import get_state
from agents.router.state_base import Breaker, Candidate, StateUnavailable, Transition, minute_of
from relay.eventloop.db import run_db

logger = logging.getLogger(__name__)

clock: Callable[[], float] = time.time
LEASE_TTL = 30.0
# A half-open deployment's probe is held this long past the model's first-token timeout: by then
# the probe has answered or failed, or its instance died and another caller may probe.
PROBE_MARGIN = 10.0
_rand: Callable[[], float] = random.random  # tests replace it to make ties and weights deterministic

__all__ = ["LEASE_TTL", "Ahead", "NoDeployment", "Outcome", "Pick", "acquire", "clock", "release", "snapshot"]


@dataclass(frozen=True)
class Pick:
    model: Any  # agents.providers.catalog.ModelChoice
    deployment: Any  # agents.providers.catalog.DeploymentChoice
    lease: str  # in-flight lease id (uuid4 hex)
    probe: bool = False  # this attempt is the half-open probe after a cooldown
    counted: tuple[int, int] | None = None  # (minute, tokens) the acquire counted against the deployment's limits


class NoDeployment(Exception):
    """Nothing to send this attempt to."""

    def __init__(self, reason: str, retry_after: float | None = None):
        self.reason = reason  # "cooldown" | "limits" | "exhausted" (all tried/excluded) | "none"
        self.retry_after = retry_after  # soonest a skipped deployment is usable again, if known
        super().__init__(f"no deployment available ({reason})")


class Outcome(StrEnum):  # (str, Enum) in the spec: a StrEnum is both
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"  # not the deployment's fault: client cancelled, upstream 400 / context window


async def _renew(leases: list[tuple[str, str]]) -> None:
    now = clock()
    await get_state().renew(leases, now=now, expiry=now + LEASE_TTL)


_keeper = LeaseKeeper(_renew, LEASE_TTL / 3)


def _candidate(deployment) -> Candidate:
    return Candidate(deployment.key, max(int(deployment.weight), 1), int(deployment.priority),
                     deployment.rpm_limit, deployment.tpm_limit)


def _breaker(policy) -> Breaker:
    return Breaker(int(policy.allowed_fails), float(policy.failure_window), float(policy.cooldown))


def _without_shared_state(deployments: list) -> Any:
    """Weighted random, as if every deployment were healthy and idle (Redis is down)."""
    return random.choices(deployments, weights=[max(int(d.weight), 1) for d in deployments])[0]  # noqa: S311


async def acquire(model, *, exclude: frozenset[str] = frozenset(), tokens: int = 0) -> Pick:
    """A deployment of `model` for the next attempt, with an in-flight lease; raises NoDeployment."""
    deployments = list(getattr(model, "deployments", ()) or ())
    if not deployments:
        raise NoDeployment("none")
    open_ = [d for d in deployments if d.key not in exclude]
    if not open_:
        raise NoDeployment("exhausted")
    lease, policy, now, tokens = uuid.uuid4().hex, model.policy, clock(), max(int(tokens), 0)
    try:
        got = await get_state().acquire(
            [_candidate(d) for d in open_], strategy=policy.strategy, lease=lease, now=now, ttl=LEASE_TTL,
            tokens=tokens, rand=_rand(), probe_ttl=float(policy.first_token_timeout) + PROBE_MARGIN)
    except StateUnavailable:
        logger.warning("router: shared state unreachable; %s routed without it", model.name, exc_info=True)
        deployment, probe, counted = _without_shared_state(open_), False, None
    else:
        if got.key is None:
            raise NoDeployment(got.reason, got.retry_after)
        deployment, probe = next(d for d in open_ if d.key == got.key), got.probe
        limited = deployment.rpm_limit is not None or deployment.tpm_limit is not None
        counted = (minute_of(now), tokens) if limited else None
        _keeper.track(deployment.key, lease)
    metrics.acquired(lease, model.name, deployment.name)
    return Pick(model, deployment, lease, probe, counted)


async def release(pick: Pick, *, outcome: Outcome, ttft: float | None = None, tokens: int = 0,
                  retry_after: float | None = None, sent: bool = True) -> None:
    """Give the lease back with the attempt's outcome; never raises (routing must not fail a run).

    sent=False: nothing reached the deployment (this instance's pool was full, the caller left
    first), so the request and tokens its acquire counted in the minute are given back: a
    deployment's rpm and tpm count what it was sent, not what this instance meant to send."""
    outcome = Outcome(outcome)
    _keeper.forget(pick.lease)
    deployment = pick.deployment
    metrics.released(pick.lease, pick.model.name, deployment.name, outcome.value, ttft)
    try:
        change = await get_state().release(
            deployment.key, pick.lease, outcome=outcome.value, now=clock(), breaker=_breaker(pick.model.policy),
            ttft=ttft, tokens=tokens, retry_after=retry_after, count_tokens=deployment.tpm_limit is not None,
            uncount=None if sent else pick.counted)
    except StateUnavailable:
        logger.warning("router: shared state unreachable; the outcome of %s/%s is not counted",
                       pick.model.name, deployment.name, exc_info=True)
        return
    except Exception:
        logger.exception("router: releasing %s/%s failed", pick.model.name, deployment.name)
        return
    if change is not None:
        await _report(pick, change)


async def _report(pick: Pick, change: Transition) -> None:
    """This caller made the transition: it alone records it."""
    from agents.actions import deployments as actions

    model, deployment = pick.model.name, pick.deployment
    logger.warning("router: %s/%s %s cooldown (%s, %.1f s)", model, deployment.name,
                   "entered" if change.entered else "left", change.reason, change.seconds)
    record = actions.cooldown_entered if change.entered else actions.cooldown_left
    try:
        await run_db(record, model=model, deployment=deployment.name, key=deployment.key, reason=change.reason,
                     seconds=change.seconds)
    except Exception:
        logger.exception("router: could not record the cooldown transition of %s/%s", model, deployment.name)


class Ahead:
    """A deployment acquired while the caller does something else first (a run's reservation and opening):
    its round trip overlaps that work instead of following it. The lease is the caller's from the
    start: `take()` hands it to the first attempt, or `drop()` gives it back, neutral (nothing was
    sent to the deployment). Exactly one of them counts; the other does nothing."""

    def __init__(self, model, *, tokens: int = 0):
        self.model = model
        self._task = asyncio.ensure_future(_acquire_a_turn_later(model, tokens))
        self._claimed = False

    def unclaimed_for(self, model) -> Ahead | None:
        """This, if it holds `model`'s first attempt and nobody took or dropped it yet."""
        return self if model is self.model and not self._claimed else None

    async def take(self) -> Pick:
        """The pick, as `acquire` would return it (or raise NoDeployment)."""
        self._claimed = True
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:  # the caller went away, not the acquire: its lease is given back
            self._task.add_done_callback(_release_when_acquired)
            raise

    async def settled(self) -> None:
        """Once the acquire has ended, either way; claims nothing and raises nothing of its own."""
        await asyncio.wait([self._task])

    async def drop(self) -> None:
        if self._claimed:
            return
        self._claimed = True
        try:
            pick = await asyncio.shield(self._task)
        except asyncio.CancelledError:
            self._task.add_done_callback(_release_when_acquired)
            raise
        except Exception:  # noqa: BLE001  (nothing was acquired: nothing to give back)
            return
        await release(pick, outcome=Outcome.NEUTRAL, sent=False)


async def _acquire_a_turn_later(model, tokens: int) -> Pick:
    """acquire, once what the caller starts next has sent its own request (the run's reservation,
    or else its opening): that trip is the one the run waits for, so it goes out first and this one
    runs beside it (started first, the acquire's Lua call delayed the opening's send by ~0.3 ms on
    this 2-core machine, bench/README.md)."""
    await asyncio.sleep(0)
    return await acquire(model, tokens=tokens)


_releasing: set[asyncio.Task] = set()  # held until done, so none is garbage-collected half-way


def _release_when_acquired(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None:
        releasing = task.get_loop().create_task(release(task.result(), outcome=Outcome.NEUTRAL, sent=False))
        _releasing.add(releasing)
        releasing.add_done_callback(_releasing.discard)


def snapshot(model) -> list[dict]:
    """Per deployment of `model`: key, name, in_flight, state ("closed" | "open" | "half_open"),
    cooldown_until, ttft_avg. Sync (metrics and the admin run in threads); [] when the state is
    unreachable."""
    deployments = list(getattr(model, "deployments", ()) or ())
    try:
        rows = get_state().snapshot([d.key for d in deployments], clock())
    except StateUnavailable:
        logger.warning("router: shared state unreachable; no snapshot of %s", model.name, exc_info=True)
        return []
    for row, deployment in zip(rows, deployments, strict=True):
        row["name"] = deployment.name
    return rows

"""The router's shared state: the interface, its rules, and the in-process implementation.

Per deployment (by its cluster-wide key) the state holds the live leases (in-flight requests, each
with an expiry), the failures inside the failure window, the circuit breaker (open until a time;
after it, half-open with at most one probe claimed), a moving average of time to first token and
the requests/tokens counted in the current minute. Every time is the caller's clock value (an
argument), never the server's, so tests drive time and every instance agrees on one rule.

The breaker: closed -> open after `allowed_fails` failures within `failure_window`, any failure
that carries a Retry-After, or a failed probe; open -> half-open when its cooldown ends; in
half-open the first acquire claims the probe (the claim expires after `probe_ttl`, so a probe whose
instance died does not hold it forever); any success on a tripped deployment closes it. Each
transition is returned by exactly one call (the one that made it), which reports it.

Two implementations, one test suite: `InProcessState` (embedded mode: one process) and
`RedisState` (agents.router.state_redis, one Lua script per call). agents.router.state picks one.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

STRATEGIES = ("least_busy", "lowest_latency", "weighted_random", "priority")
TTFT_ALPHA = 0.3  # weight of the newest time to first token in the moving average
MINUTE_KEEP_SECONDS = 180  # a minute's rpm/tpm counters outlive it a little, then go
MAX_COOLDOWN = 3600.0  # a Retry-After beyond an hour is capped: an upstream cannot park a deployment for days


class StateUnavailable(Exception):
    """The shared state (Redis) cannot be reached; routing goes on without it."""


@dataclass(frozen=True)
class Candidate:
    """What the state needs of a deployment to choose among them."""

    key: str
    weight: int = 1
    priority: int = 0
    rpm_limit: int | None = None
    tpm_limit: int | None = None


@dataclass(frozen=True)
class Breaker:
    allowed_fails: int
    failure_window: float
    cooldown: float


@dataclass(frozen=True)
class Acquired:
    key: str | None  # None: nothing available
    probe: bool = False
    reason: str = ""  # when key is None: "cooldown" | "limits"
    retry_after: float | None = None  # when key is None: soonest one could be available


@dataclass(frozen=True)
class Transition:
    """A breaker change, seen by exactly one caller in the cluster."""

    entered: bool  # True: cooldown entered; False: cooldown left
    reason: str  # entered: "failures" | "retry_after" | "probe_failed"; left: "probe_succeeded" | "success"
    seconds: float  # entered: the cooldown's length; left: how long the deployment was tripped


def minute_of(now: float) -> int:
    return int(math.floor(now / 60))


def choose(candidates: list[dict], strategy: str, rand: float) -> dict:
    """The strategy's pick among candidates (dicts with weight, priority, busy, ttft), in order.

    `rand` in [0, 1) breaks ties and draws weights; RedisState's Lua mirrors this exactly.
    """
    if strategy == "weighted_random":
        return _weighted(candidates, rand)
    if strategy == "priority":
        best = min(c["priority"] for c in candidates)
        return _weighted([c for c in candidates if c["priority"] == best], rand)
    field = "ttft" if strategy == "lowest_latency" else "busy"
    best = min(c[field] for c in candidates)
    tied = [c for c in candidates if c[field] == best]
    return tied[min(int(rand * len(tied)), len(tied) - 1)]


def _weighted(candidates: list[dict], rand: float) -> dict:
    left = rand * sum(c["weight"] for c in candidates)
    for candidate in candidates:
        left -= candidate["weight"]
        if left < 0:
            return candidate
    return candidates[-1]


class RouterState:
    """The interface. `now` is the router's clock; every call is atomic across the cluster."""

    async def acquire(self, candidates: list[Candidate], *, strategy: str, lease: str, now: float, ttl: float,
                      tokens: int, rand: float, probe_ttl: float) -> Acquired:
        """Skip deployments in cooldown, half-open ones whose probe is taken, and those whose minute
        rpm/tpm would be exceeded; prefer a half-open one with its probe free (it claims the probe,
        so a healed deployment gets traffic back at once); choose by strategy; take a lease until
        now + ttl and count the request and `tokens` in the minute."""
        raise NotImplementedError

    async def release(self, key: str, lease: str, *, outcome: str, now: float, breaker: Breaker,
                      ttft: float | None = None, tokens: int = 0, retry_after: float | None = None,
                      count_tokens: bool = False, uncount: tuple[int, int] | None = None) -> Transition | None:
        """Drop the lease; outcome "success" | "failure" | "neutral" (see the module docstring).

        uncount: (minute, tokens) the acquire counted, given back: the attempt was never sent."""
        raise NotImplementedError

    async def renew(self, leases: list[tuple[str, str]], *, now: float, expiry: float) -> None:
        """Move the expiry of these (key, lease) pairs that are live at `now`; expired ones stay gone."""
        raise NotImplementedError

    def snapshot(self, keys: list[str], now: float) -> list[dict]:
        """Per key: in_flight, state ("closed" | "open" | "half_open"), cooldown_until, ttft_avg.
        Sync (metrics scrapes and the admin run in threads); read-only."""
        raise NotImplementedError


def state_name(open_until: float, now: float) -> str:
    if not open_until:
        return "closed"
    return "open" if now < open_until else "half_open"


class _Deployment:
    __slots__ = ("leases", "failures", "open_until", "opened_at", "probe_until", "probe_lease", "ttft", "minutes")

    def __init__(self):
        self.leases: dict[str, float] = {}  # lease -> expiry
        self.failures: dict[str, float] = {}  # lease -> when it failed
        self.open_until = 0.0
        self.opened_at = 0.0
        self.probe_until = 0.0
        self.probe_lease = ""
        self.ttft: float | None = None
        self.minutes: dict[int, list[int]] = {}  # minute -> [requests, tokens]

    def live(self, now: float) -> int:
        for lease in [lease for lease, expiry in self.leases.items() if expiry <= now]:
            del self.leases[lease]
        return len(self.leases)

    def minute(self, now: float) -> list[int]:
        current = minute_of(now)
        for old in [m for m in self.minutes if m < current - MINUTE_KEEP_SECONDS // 60]:
            del self.minutes[old]
        return self.minutes.setdefault(current, [0, 0])


class InProcessState(RouterState):
    """Embedded mode. One lock around plain dict arithmetic, no await inside it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._deployments: dict[str, _Deployment] = {}

    def _get(self, key: str) -> _Deployment:
        found = self._deployments.get(key)
        if found is None:
            found = self._deployments[key] = _Deployment()
        return found

    async def acquire(self, candidates, *, strategy, lease, now, ttl, tokens, rand, probe_ttl):
        with self._lock:
            usable, probes, limited, soonest = [], [], False, None
            for candidate in candidates:
                dep = self._get(candidate.key)
                probe = False
                if dep.open_until:
                    wait = dep.open_until - now if now < dep.open_until else dep.probe_until - now
                    if wait > 0:
                        soonest = wait if soonest is None else min(soonest, wait)
                        continue
                    probe = True
                if candidate.rpm_limit is not None or candidate.tpm_limit is not None:
                    requests, used = dep.minute(now)
                    if ((candidate.rpm_limit is not None and requests + 1 > candidate.rpm_limit)
                            or (candidate.tpm_limit is not None and used + tokens > candidate.tpm_limit)):
                        limited = True
                        wait = (minute_of(now) + 1) * 60 - now
                        soonest = wait if soonest is None else min(soonest, wait)
                        continue
                row = {"c": candidate, "weight": candidate.weight, "priority": candidate.priority,
                       "busy": dep.live(now), "ttft": dep.ttft or 0.0, "probe": probe}
                (probes if probe else usable).append(row)
            usable = probes or usable
            if not usable:
                return Acquired(None, reason="limits" if limited else "cooldown", retry_after=soonest)
            chosen = choose(usable, strategy, rand)
            candidate, dep = chosen["c"], self._get(chosen["c"].key)
            dep.leases[lease] = now + ttl
            if candidate.rpm_limit is not None or candidate.tpm_limit is not None:
                counts = dep.minute(now)
                counts[0] += 1
                counts[1] += tokens
            if chosen["probe"]:
                dep.probe_until, dep.probe_lease = now + probe_ttl, lease
            return Acquired(candidate.key, probe=chosen["probe"])

    async def release(self, key, lease, *, outcome, now, breaker, ttft=None, tokens=0, retry_after=None,
                      count_tokens=False, uncount=None):
        with self._lock:
            dep = self._get(key)
            dep.leases.pop(lease, None)
            if count_tokens and tokens > 0:
                dep.minute(now)[1] += tokens
            if uncount is not None and (counts := dep.minutes.get(uncount[0])) is not None:
                counts[0], counts[1] = max(counts[0] - 1, 0), max(counts[1] - uncount[1], 0)
            was_probe = bool(lease) and dep.probe_lease == lease
            if was_probe:
                dep.probe_until, dep.probe_lease = 0.0, ""
            if outcome == "success":
                if ttft is not None:
                    dep.ttft = ttft if dep.ttft is None else dep.ttft + TTFT_ALPHA * (ttft - dep.ttft)
                if dep.open_until:
                    tripped = now - dep.opened_at
                    dep.open_until = dep.opened_at = dep.probe_until = 0.0
                    dep.probe_lease = ""
                    dep.failures.clear()
                    return Transition(False, "probe_succeeded" if was_probe else "success", tripped)
                return None
            if outcome != "failure":
                return None
            if dep.open_until:
                if was_probe:
                    return self._open(dep, now, retry_after, breaker.cooldown, "probe_failed")
                if retry_after is not None and now < dep.open_until:
                    dep.open_until = max(dep.open_until, now + min(max(retry_after, 0.0), MAX_COOLDOWN))
                return None
            dep.failures[lease] = now
            for old in [lease for lease, at in dep.failures.items() if at <= now - breaker.failure_window]:
                del dep.failures[old]
            if retry_after is not None:
                return self._open(dep, now, retry_after, breaker.cooldown, "retry_after")
            if len(dep.failures) >= max(breaker.allowed_fails, 1):
                return self._open(dep, now, None, breaker.cooldown, "failures")
            return None

    @staticmethod
    def _open(dep: _Deployment, now: float, retry_after, cooldown: float, reason: str) -> Transition:
        seconds = min(max(retry_after, 0.0), MAX_COOLDOWN) if retry_after is not None else cooldown
        dep.open_until, dep.opened_at = now + seconds, now
        dep.probe_until, dep.probe_lease = 0.0, ""
        dep.failures.clear()
        return Transition(True, reason, seconds)

    async def renew(self, leases, *, now, expiry):
        with self._lock:
            for key, lease in leases:
                held = self._deployments.get(key)
                if held is not None and held.leases.get(lease, now) > now:
                    held.leases[lease] = expiry

    def snapshot(self, keys, now):
        with self._lock:
            rows = []
            for key in keys:
                dep = self._get(key)
                rows.append({"key": key, "in_flight": dep.live(now), "state": state_name(dep.open_until, now),
                             "cooldown_until": dep.open_until or None, "ttft_avg": dep.ttft})
            return rows

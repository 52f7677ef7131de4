"""Router fixtures: the shared state under test (in-process and Redis), a hand-driven clock, and
models built like the catalog's (agents.providers.catalog)."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings

import agents.router as router
from agents.providers.catalog import DeploymentChoice, ModelChoice, RoutingPolicy
from agents.router.state import key_prefix, set_state
from agents.router.state_base import InProcessState
from tests.conftest import require_redis

NOW = 1_800_000_000.0  # the start of a minute: rpm/tpm windows are whole minutes of the clock
KINDS = ["inprocess", "redis"]


def deployment(key: str, *, name: str | None = None, **fields) -> DeploymentChoice:
    return DeploymentChoice(key=key, name=name or key, base_url="http://127.0.0.1:9/v1", upstream_model="up",
                            **fields)


def model(*deployments: DeploymentChoice, name: str = "m", fallbacks=(), **policy) -> ModelChoice:
    return ModelChoice(name=name, kind="openai", deployments=tuple(deployments), policy=RoutingPolicy(**policy),
                       fallbacks=tuple(fallbacks))


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The router's clock, fixed until a test advances it."""
    fixed = Clock()
    monkeypatch.setattr(router, "clock", fixed)
    return fixed


class Rand:
    """The router's random number: `value` when set, else a seeded sequence."""

    def __init__(self):
        import random

        self.value: float | None = None
        self._seeded = random.Random(18)

    def __call__(self) -> float:
        return self._seeded.random() if self.value is None else self.value


@pytest.fixture
def rand(monkeypatch) -> Rand:
    fixed = Rand()
    monkeypatch.setattr(router, "_rand", fixed)
    return fixed


def make_state(kind: str, prefix: str):
    if kind == "inprocess":
        return InProcessState()
    from agents.router.state_redis import RedisState

    return RedisState(settings.REDIS_URL, prefix)


@pytest.fixture(params=KINDS)
def states(request):
    """Two handles on one shared state, as two instances hold them (Redis: two clients; in-process,
    where one process is the whole cluster: the same object). The first is the process's state."""
    prefix = ""
    if request.param == "redis":
        require_redis()
        prefix = key_prefix() + uuid.uuid4().hex[:8] + ":"  # tests never see each other's state
    first = make_state(request.param, prefix)
    second = first if request.param == "inprocess" else make_state(request.param, prefix)
    previous = set_state(first)
    yield first, second
    set_state(previous)
    if hasattr(first, "clear"):
        first.clear()


@pytest.fixture
def state(states):
    return states[0]


@pytest.fixture
def redis_state():
    """The Redis state alone, installed as the process's."""
    require_redis()
    installed = make_state("redis", key_prefix() + uuid.uuid4().hex[:8] + ":")
    previous = set_state(installed)
    yield installed
    set_state(previous)
    installed.clear()

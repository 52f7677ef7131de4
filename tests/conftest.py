"""Shared fixtures: organizations, one user per role, authenticated clients, service checks."""

import datetime as dt
import logging
import os

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.actions.keys import create_api_key
from accounts.actions.organizations import create_organization
from accounts.actions.users import create_user
from accounts.roles import ROLES

# The streaming fixtures (fake_upstream, upstream_model, user_key) for every test directory.
pytest_plugins = ["tests.support.streams", "tests.support.later_gate"]  # the latter: the `hold` fixture

REQUIRE_SERVICES = os.environ.get("RELAY_REQUIRE_SERVICES") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a service or tool is missing; in CI (RELAY_REQUIRE_SERVICES=1) fail instead."""
    if condition:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"RELAY_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def require_redis() -> None:
    require(bool(settings.REDIS_URL), "REDIS_URL is not set (Redis-backed test)")


def require_postgres() -> None:
    require(settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
            "DATABASE_URL does not point at PostgreSQL")


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing():
    """Tests create many users; the production hasher is deliberately slow."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.RELAY_LOCAL_TOKEN_DELAY_MS = 0  # tests await events; they don't watch tokens being typed
    # Async views called through the test client must see the test's transaction (relay/eventloop/db.py).
    settings.RELAY_DB_THREAD_SENSITIVE = True


@pytest.fixture(autouse=True, scope="session")
def _no_routing_state_of_earlier_runs():
    """Routing state a killed run left under this worker's prefix (deployment keys are row ids)."""
    if settings.REDIS_URL:
        from redis.exceptions import RedisError

        from agents.router.state import key_prefix
        from agents.router.state_redis import RedisState

        try:
            RedisState(settings.REDIS_URL, key_prefix()).clear()
        except RedisError:
            pass  # no Redis: the tests that need it skip (or fail with RELAY_REQUIRE_SERVICES=1)


@pytest.fixture(autouse=True)
def _close_db_threads():
    """The async DB pool's threads hold connections; close them so the test database can be dropped."""
    yield
    from relay.eventloop.db import close_db_threads

    close_db_threads()


@pytest.fixture(autouse=True)
def _clear_cache():
    """Each test starts with an empty cache (keys, throttles) — Redis included."""
    from django.core.cache import cache

    from agents import heavy
    from agents.optimizer import forget_settings
    from agents.providers.catalog import forget_catalog
    from agents.router import state as router_state
    from billing.rule_cache import RULES

    heavy.forget()  # no heavy-work lease outlives its test
    RULES.clear()  # flushed tables reuse ids on SQLite: no copy may outlive its test
    forget_catalog()  # tests create and flush model endpoints without the signals that drop it
    forget_settings()
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")  # this worker's keys only; clear() would flush every worker's
    else:
        cache.clear()
    router_state.set_state(None)
    yield
    # Deployment keys are row ids, reused by the next session's database: no breaker or lease may
    # outlive its test (processes a test starts clear their own).
    used = router_state.set_state(None)
    if hasattr(used, "clear"):
        used.clear()


# The clock's awkward moments: "this month" has only just begun (most of the last days are in the
# previous month), the month and the ISO week end within minutes, the year ends, a leap day, and
# for an organization in Europe/Berlin the hour after clocks went forward.
FIRST_OF_MONTH = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.UTC)
AWKWARD_MOMENTS = {
    "first-of-month-00:30": FIRST_OF_MONTH,
    "last-of-month-and-week-23:50": dt.datetime(2027, 1, 31, 23, 50, tzinfo=dt.UTC),  # a Sunday
    "new-years-eve-23:59": dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC),
    "leap-day": dt.datetime(2028, 2, 29, 12, tzinfo=dt.UTC),
    "berlin-spring-forward-03:30": dt.datetime(2027, 3, 28, 1, 30, tzinfo=dt.UTC),  # a 23-hour day there
}


@pytest.fixture
def fixed_now(request, time_machine) -> dt.datetime:
    """The test runs at a fixed moment (FIRST_OF_MONTH, or `indirect=True` parameters), and time
    ticks on from there. time-machine moves the clock itself, so the code under test sees the same
    time in every thread (the async views' DB pool, a live server). List it before the fixtures
    that create rows, so they are made at that moment too."""
    moment = getattr(request, "param", FIRST_OF_MONTH)
    time_machine.move_to(moment, tick=True)
    return moment


@pytest.fixture
def org(db):
    return create_organization("Acme")


@pytest.fixture
def other_org(db):
    return create_organization("Globex")


def _make_users(organization, tag=""):
    return {
        role: create_user(f"{role}{tag}", organization=organization, role=role, email=f"{role}{tag}@example.com",
                          password="correct horse battery staple", team="Research")
        for role in ROLES
    }


@pytest.fixture
def users(org):
    """One user per role in org: users["admin"], users["user"], users["viewer"], users["api_user"]."""
    return _make_users(org)


@pytest.fixture
def other_users(other_org):
    return _make_users(other_org, tag="-globex")


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def client_for():
    """client_for(user, via="session"|"api_key"|"jwt") -> an APIClient authenticated as user."""

    def make(user, via="session"):
        client = APIClient()
        if via == "session":
            client.force_login(user)
        elif via == "api_key":
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(user, 'test').secret}")
        elif via == "jwt":
            from rest_framework_simplejwt.tokens import RefreshToken

            client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
        else:
            raise ValueError(via)
        return client

    return make


def assert_envelope(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


class ASGIServer:
    """Relay's real ASGI application (HTTP and WebSocket) served by uvicorn on 127.0.0.1."""

    def __init__(self, ws: str = "websockets-sansio", around=None):
        """`around(app)`, if given, wraps the application: a test's stand-in for the transport."""
        import threading

        import uvicorn
        from channels.layers import channel_layers

        from relay.asgi import application
        from tests.support.ports import bound_socket

        # channels-redis ties a layer to the event loop that first used it; each server has its own.
        channel_layers._reset_backends("CHANNEL_LAYERS")

        self.socket = bound_socket()
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = around(application) if around else application
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws=ws)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the ASGI test server did not start")
            time.sleep(0.01)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_asgi_server(settings, **options) -> ASGIServer:
    """A started ASGIServer(**options) with the settings a live Relay runs under; stop() it when done."""
    settings.RELAY_DB_THREAD_SENSITIVE = False  # the production threading
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1", "localhost"]
    return ASGIServer(**options).start()


@pytest.fixture
def asgi_server(transactional_db, settings):
    """A live Relay over real sockets; data written by the test is visible to it (transactional_db)."""
    server = start_asgi_server(settings)
    yield server
    server.stop()


class _TaskErrors(logging.Handler):
    """Exceptions of asyncio tasks nobody awaited ("Task exception was never retrieved"), from any loop.

    asyncio and uvloop both report them through the "asyncio" logger when the task is collected.
    """

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record):
        if "never retrieved" in record.getMessage():
            self.seen.append(record.getMessage() + " " + str(record.exc_info[1] if record.exc_info else ""))

    def collected(self) -> list[str]:
        import gc

        gc.collect()  # a task's unretrieved exception is reported when the task is collected
        return list(self.seen)


@pytest.fixture(autouse=True)
def unretrieved_task_errors():
    """Fail a test that leaves a task's exception unretrieved: it is log noise a client could trigger."""
    errors = _TaskErrors()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(errors)
    try:
        yield errors
        leftover = errors.collected()
    finally:
        asyncio_logger.removeHandler(errors)
    if leftover:
        pytest.fail(f"task exception(s) never retrieved: {leftover}")

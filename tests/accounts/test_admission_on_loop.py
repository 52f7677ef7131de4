"""A request with a cached API key is admitted on the event loop, and refused exactly as before.

accounts.admission.admit_on_loop decides only what it can alone (a cached key that admits the
secret now, holds the requirement, and whose last use was noted this minute) and counts the key's
requests/minute with the same script; every other request, every refusal included, goes to the DB
thread's admission (relay.api.async_views._admit), which decides and records it as ever.

Each refusal below is made with a stale copy in the shared cache (the copy the loop reads): if
the loop admitted what the copy's own fields refuse, the request would get 200.
"""

from __future__ import annotations

import datetime
from decimal import Decimal

import httpx
import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.actions.keys import create_api_key
from accounts.services import key_cache_key
from agents.actions.endpoints import create_endpoint
from audit import actions
from audit.models import AuditEvent
from billing.models import ModelPrice
from relay.api import async_views
from tests.conftest import require_redis

BODY = {"model": "fake-large", "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0.7}


@pytest.fixture(autouse=True)
def _redis():
    require_redis()  # the loop's admission reads the key's copy from Redis; without it every request goes to a thread


@pytest.fixture
def model(fake_upstream):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))


@pytest.fixture
def thread_admissions(monkeypatch):
    """The requests admitted by the DB thread's step, by their Authorization header."""
    seen, admit = [], async_views._admit

    def spied(django_request, *args):
        seen.append(django_request.META.get("HTTP_AUTHORIZATION"))
        return admit(django_request, *args)

    monkeypatch.setattr(async_views, "_admit", spied)
    return seen


def _ask(server, secret, path="/v1/chat/completions", **kwargs):
    kwargs.setdefault("json", BODY)
    return httpx.post(server.url + path, headers={"Authorization": f"Bearer {secret}"}, timeout=30, **kwargs)


def _stale_copy(issued, change) -> None:
    """The shared cache's copy of the key, changed as a change not yet dropped from it would leave it."""
    name = key_cache_key(issued.key.prefix)
    copy = cache.get(name)
    change(copy)
    cache.set(name, copy, 300)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("on_loop", [True, False])
def test_a_cached_key_is_admitted_on_the_loop(asgi_server, users, model, thread_admissions, settings, on_loop):
    settings.RELAY_ADMIT_ON_LOOP = on_loop
    issued = create_api_key(users["user"], "loop")

    for _ in range(3):
        response = _ask(asgi_server, issued.secret)
        assert response.status_code == 200, response.text

    # The first request read the key from the database (and noted its use): the DB thread's step.
    # The next two found its copy: on the loop, unless switched off.
    assert len(thread_admissions) == (1 if on_loop else 3)
    assert AuditEvent.objects.filter(action=actions.AGENT_RUN, api_key_prefix=issued.key.prefix).count() == 3


def _revoke(copy):
    copy.revoked_at = timezone.now()


def _expire(copy):
    copy.expires_at = timezone.now() - datetime.timedelta(seconds=1)


def _deactivate_owner(copy):
    copy.owner.is_active = False


def _elsewhere_only(copy):
    copy.allowed_ips = ["10.0.0.0/8"]


STALE = {"revoked": (_revoke, "This API key has been revoked."),
         "expired": (_expire, "This API key has expired."),
         "owner deactivated": (_deactivate_owner, "The owner of this API key is deactivated."),
         "another address": (_elsewhere_only, "This API key may not be used from this address.")}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", list(STALE))
def test_a_stale_copy_that_refuses_is_refused_as_ever(asgi_server, users, model, thread_admissions, case):
    issued = create_api_key(users["user"], "stale")
    assert _ask(asgi_server, issued.secret).status_code == 200
    change, reason = STALE[case]
    _stale_copy(issued, change)

    response = _ask(asgi_server, issued.secret)

    assert response.status_code == 401 and response.json()["error"]["message"] == reason
    assert len(thread_admissions) == 2  # decided by the DB thread's step, both times
    used_after_revoke = AuditEvent.objects.filter(action=actions.API_KEY_USED_AFTER_REVOKE).count()
    assert used_after_revoke == (1 if case == "revoked" else 0)  # recorded once, where it always was


@pytest.mark.django_db(transaction=True)
def test_a_revoked_parent_in_the_copy_refuses_the_child(asgi_server, users, model, thread_admissions):
    parent = create_api_key(users["user"], "parent")
    child = create_api_key(users["user"], "child", parent=parent.key)
    assert _ask(asgi_server, child.secret).status_code == 200
    _stale_copy(child, lambda copy: setattr(copy.parent, "revoked_at", timezone.now()))

    response = _ask(asgi_server, child.secret)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has been revoked with the key it was made from."


@pytest.mark.django_db(transaction=True)
def test_a_wrong_secret_for_a_cached_prefix_is_refused(asgi_server, users, model, thread_admissions):
    issued = create_api_key(users["user"], "guessed")
    assert _ask(asgi_server, issued.secret).status_code == 200
    last = issued.secret[-1]
    guessed = issued.secret[:-1] + ("A" if last != "A" else "B")

    response = _ask(asgi_server, guessed)

    assert response.status_code == 401 and response.json()["error"]["message"] == "Invalid API key."


@pytest.mark.django_db(transaction=True)
def test_a_copy_without_the_permission_is_refused(asgi_server, users, model, thread_admissions):
    issued = create_api_key(users["user"], "no vision", scopes=["use_vision_agent"])
    files = {"image": ("x.png", b"not read: refused first", "image/png")}
    assert _ask(asgi_server, issued.secret, "/api/v1/vision/analyze", json=None, files=files).status_code != 403
    _stale_copy(issued, lambda copy: setattr(copy, "scopes", []))

    response = _ask(asgi_server, issued.secret, "/api/v1/vision/analyze", json=None, files=files)

    assert response.status_code == 403
    assert len(thread_admissions) == 2


@pytest.mark.django_db(transaction=True)
def test_the_rate_limit_counts_each_request_once_on_the_loop(asgi_server, users, model, thread_admissions):
    parent = create_api_key(users["user"], "parent", requests_per_minute=10)
    issued = create_api_key(users["user"], "limited", requests_per_minute=3, parent=parent.key)

    answers = [_ask(asgi_server, issued.secret) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers.get("X-RateLimit-Remaining-Requests") for a in answers[:3]] == ["2", "1", "0"]
    assert int(answers[3].headers["Retry-After"]) >= 1
    assert len(thread_admissions) == 1  # the first (the key read from the database); the rest on the loop
    # The parent counted the same three requests (one family, one atomic step), not more.
    sibling = create_api_key(users["user"], "sibling", requests_per_minute=10, parent=parent.key)
    for _ in range(7):
        assert _ask(asgi_server, sibling.secret).status_code == 200
    assert _ask(asgi_server, sibling.secret).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_redis_lost_on_the_loop_is_answered_503_at_once(asgi_server, users, model, thread_admissions, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from relay.eventloop import caches

    issued = create_api_key(users["user"], "lost")
    assert _ask(asgi_server, issued.secret).status_code == 200

    async def unreachable(read):
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(caches.ManyRead, "result", unreachable)  # the key's read, ahead or not
    response = _ask(asgi_server, issued.secret)

    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert len(thread_admissions) == 1  # not tried again on a DB thread, to wait out the same timeout


@pytest.mark.django_db
def test_a_burst_of_admissions_reads_the_cache_over_one_connection():
    """A thousand streams opening at once: their key reads share the loop's pipelined trips on the
    one connection the script runner holds, instead of queueing for a pool's connections (which
    answered 503 "No connection available" under load.py's 1,000 streams)."""
    import asyncio

    from relay.eventloop import caches as loop_caches

    cache.set("burst-test-key", {"a": 1}, 60)

    async def burst():
        found = await asyncio.gather(*(loop_caches.get_many_on_loop(["burst-test-key", "burst-absent"])
                                       for _ in range(1000)))
        pool = loop_caches._redis_of_loop()[0].connection_pool
        return found, len(pool._available_connections) + len(pool._in_use_connections)

    found, connections = asyncio.run(burst())
    assert found == [{"burst-test-key": {"a": 1}}] * 1000
    assert connections == 1


@pytest.mark.django_db(transaction=True)
def test_the_keys_read_goes_out_before_the_view_runs_and_the_admission_takes_it(asgi_server, users, model,
                                                                                 monkeypatch):
    """The admission's one read of a cached key is sent as the request comes in, so its trip runs beside
    the rest of the middleware, and the admission decides from it without reading again.
    Control: accounts.middleware.KeyReadAheadMiddleware; without it the read is sent from inside the
    view's admission, and this fails."""
    from accounts import admission
    from relay import redis_scripts
    from relay.eventloop import caches

    issued = create_api_key(users["user"], "ahead")
    assert _ask(asgi_server, issued.secret).status_code == 200  # the key's copy is cached from now on
    order, trip, admit, read = [], redis_scripts._trip, async_views._admit_on_loop, admission.get_many_on_loop
    mget = redis_scripts._sha(caches._MGET)

    async def spied_trip(connection, commands, *args):
        order.extend("key read sent" for command in commands if command[1] == mget)
        return await trip(connection, commands, *args)

    async def spied_admit(*args):
        order.append("view admits")
        return await admit(*args)

    async def read_again(keys):
        order.append("read again")
        return await read(keys)

    monkeypatch.setattr(redis_scripts, "_trip", spied_trip)
    monkeypatch.setattr(async_views, "_admit_on_loop", spied_admit)
    monkeypatch.setattr(admission, "get_many_on_loop", read_again)
    for _ in range(2):
        response = _ask(asgi_server, issued.secret)
        assert response.status_code == 200, response.text
    assert order == ["key read sent", "view admits"] * 2

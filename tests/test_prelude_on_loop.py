"""A model call admitted on the event loop runs its view's prelude there too, when it reads no database.

relay.api.async_views._admit_on_loop: the prelude (the body checked, the run's reads from the
per-process copies, agents.runner.read_ahead) runs on the loop, with no trip to a DB thread; a
prelude that must read the database (a copy outdated by a change) raises Django's
SynchronousOnlyOperation there before any query, and runs again, whole, on a DB thread.
"""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from accounts.actions.keys import create_api_key
from agents import runner
from audit import actions
from audit.models import AuditEvent
from billing.models import UsageRecord
from billing.rule_cache import RULES
from tests.accounts.test_admission_on_loop import BODY, model  # noqa: F401  (the priced model, a fixture)
from tests.conftest import require_redis

pytestmark = pytest.mark.usefixtures("model")


@pytest.fixture
def read_aheads(monkeypatch):
    """Where each prelude's reads ran: "loop", or "thread"; and each one's outcome."""
    seen, read_ahead = [], runner.read_ahead

    def spied(req):
        try:
            asyncio.get_running_loop()
            where = "loop"
        except RuntimeError:
            where = "thread"
        try:
            out = read_ahead(req)
        except BaseException as error:
            seen.append((where, type(error).__name__))
            raise
        seen.append((where, "ok"))
        return out

    monkeypatch.setattr(runner, "read_ahead", spied)
    return seen


def _ask(server, secret, **body):
    return httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                      json={**BODY, **body}, timeout=30)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("on_loop", [True, False])
def test_the_prelude_runs_on_the_loop_when_its_copies_are_current(asgi_server, users, read_aheads, settings, on_loop):
    require_redis()  # admitted on the loop: the key's copy is read from Redis
    settings.RELAY_PRELUDE_ON_LOOP = on_loop
    issued = create_api_key(users["user"], "loop")
    for stream in (False, False, True):
        response = _ask(asgi_server, issued.secret, stream=stream)
        assert response.status_code == 200, response.text

    # The first request read the key from the database: admitted, and its prelude run, on a DB
    # thread. The next two found every copy current: their preludes ran on the loop, unless switched off.
    assert read_aheads == [("thread", "ok")] + [("loop" if on_loop else "thread", "ok")] * 2
    assert AuditEvent.objects.filter(action=actions.AGENT_RUN, api_key_prefix=issued.key.prefix).count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_prelude_that_reads_the_database_runs_again_on_a_thread(asgi_server, users, read_aheads):
    require_redis()  # admitted on the loop: the key's copy is read from Redis
    issued = create_api_key(users["user"], "loop")
    assert _ask(asgi_server, issued.secret).status_code == 200
    assert _ask(asgi_server, issued.secret).status_code == 200
    read_aheads.clear()

    RULES.bump()  # the budget rules changed: every process reads them again, from the database
    response = _ask(asgi_server, issued.secret)

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    # On the loop it stopped at the database, before any query; on a thread it ran whole.
    assert read_aheads == [("loop", "SynchronousOnlyOperation"), ("thread", "ok")]
    # One run: one usage record and one audit event, however many times its prelude started.
    assert UsageRecord.objects.filter(api_key=issued.key).count() == 3
    assert AuditEvent.objects.filter(action=actions.AGENT_RUN, api_key_prefix=issued.key.prefix).count() == 3

    # Read again, the copies are current: the next prelude stays on the loop.
    read_aheads.clear()
    assert _ask(asgi_server, issued.secret).status_code == 200
    assert read_aheads == [("loop", "ok")]


@pytest.mark.django_db(transaction=True)
def test_a_refusal_on_the_loop_is_answered_as_on_a_thread(asgi_server, users, read_aheads):
    require_redis()  # admitted on the loop: the key's copy is read from Redis
    issued = create_api_key(users["user"], "loop")
    assert _ask(asgi_server, issued.secret).status_code == 200

    unknown = _ask(asgi_server, issued.secret, model="no-such-model")
    invalid = _ask(asgi_server, issued.secret, messages=[])

    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "not_found"
    assert "no-such-model" in unknown.json()["error"]["message"]
    assert invalid.status_code == 400, invalid.text
    assert read_aheads[1:] == [("loop", "NotFound")]  # the empty messages failed their check before any read
    assert UsageRecord.objects.filter(api_key=issued.key).count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_uploaded_image_is_read_where_its_prelude_can_finish(asgi_server, users, read_aheads):
    """A multipart body's files are read as the prelude goes: a prelude started on the loop and
    redone on a thread would find them read. It runs on a DB thread from the start."""
    issued = create_api_key(users["user"], "loop")
    assert _ask(asgi_server, issued.secret).status_code == 200
    RULES.bump()  # the prelude needs the database
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 30, 30)).save(buffer, "PNG")

    response = httpx.post(asgi_server.url + "/api/v1/vision/analyze", headers={"Authorization": f"Bearer {issued.secret}"},
                          files={"image": ("red.png", buffer.getvalue(), "image/png")}, data={"question": "Which colour?"},
                          timeout=30)

    assert response.status_code == 200, response.text
    assert read_aheads[1:] == [("thread", "ok")]

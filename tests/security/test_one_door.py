"""One door for every run (Trust I): the same rules on /api/v1/query, /api/v1/stream,
/v1/chat/completions and every WebSocket query.

Invariant: each query is admitted against the credential's *current* state. A key revoked, an
owner deactivated or a role lowered — by another process, while a WebSocket stays open — binds the
very next query on every transport; a key's requests/minute counts queries on every transport;
each refusal leaves the same audit events whichever transport it came through. A dead credential
closes a WebSocket with 4401, a lost permission with 4403.
"""

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
import websockets

from accounts.actions.keys import create_api_key, revoke_api_key
from accounts.actions.users import set_role
from accounts.models import User
from audit.models import AuditEvent
from billing.models import ModelPrice
from tests.billing.test_live_budgets import live_settings
from tests.support.live import instances

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["live_settings"]
TRANSPORTS = ["query", "stream", "openai", "websocket"]
QUERY = {"query": "What is 2+2?", "agent_type": "math", "model": "local-mini", "cache": False}
WS_CLOSE_STATUS = {4401: 401, 4403: 403}
WS_ERROR_STATUS = {"authentication_failed": 401, "not_authenticated": 401, "permission_denied": 403,
                   "rate_limited": 429}


@pytest.fixture
def priced(transactional_db):
    ModelPrice.objects.get_or_create(model="local-mini", defaults={
        "input_per_1k": Decimal("0.0001"), "output_per_1k": Decimal("0.0002")})


class HTTPCaller:
    """Asks through one HTTP endpoint; every answer is (status, error code or None)."""

    def __init__(self, kind, urls, secret):
        self.kind, self.urls, self.secret, self.turn = kind, urls, secret, 0

    async def ask(self):
        url = self.urls[self.turn % len(self.urls)]  # alternate the instances
        self.turn += 1
        headers = {"Authorization": f"Bearer {self.secret}"}
        async with httpx.AsyncClient(timeout=60) as client:
            if self.kind == "openai":
                body = {"model": "relay-math", "messages": [{"role": "user", "content": QUERY["query"]}],
                        "stream": False}
                response = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            else:
                response = await client.post(f"{url}/api/v1/{self.kind}", json=QUERY, headers=headers)
        if response.status_code == 200:
            if self.kind == "stream":
                assert '"type": "done"' in response.text, response.text
            return 200, None
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
        return response.status_code, response.json()["error"]["code"]

    async def close(self):
        return None

    def closed_with(self):
        return None


class WebSocketCaller:
    """One socket kept open through every state change; answers map onto the HTTP statuses."""

    def __init__(self, urls, secret):
        self.url = urls[0].replace("http://", "ws://") + "/ws/chat/"
        self.secret, self.ws = secret, None

    async def ask(self):
        if self.ws is None:
            self.ws = await websockets.connect(self.url)
            await self.ws.send(json.dumps({"type": "auth", "token": self.secret}))
            assert json.loads(await self.ws.recv())["type"] == "authenticated"
        await self.ws.send(json.dumps({"type": "query", **QUERY}))
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if event["type"] == "done":
                return 200, None
            if event["type"] == "error":
                return WS_ERROR_STATUS.get(event["code"], 400), event["code"]

    def closed_with(self):
        return self.ws.close_code if self.ws is not None else None

    async def wait_closed(self):
        await asyncio.wait_for(self.ws.wait_closed(), 30)
        return self.ws.close_code

    async def close(self):
        if self.ws is not None:
            await self.ws.close()


def caller(transport, urls, secret):
    return WebSocketCaller(urls, secret) if transport == "websocket" else HTTPCaller(transport, urls, secret)


def denials_since(mark: int) -> list[str]:
    return sorted(AuditEvent.objects.filter(sequence__gt=mark, status="denied").values_list("action", flat=True))


def last_sequence() -> int:
    event = AuditEvent.objects.order_by("-sequence").first()
    return event.sequence if event else 0


async def in_another_thread(change):
    """The test's own ORM work: off the event loop, committed before the next query is sent."""
    await asyncio.to_thread(change)


async def refused_after(transport, urls, secret, change):
    """Answered once, `change` made elsewhere, then: (status, code, WS close code, denied audit actions)."""
    client = caller(transport, urls, secret)
    try:
        assert await client.ask() == (200, None)
        mark = await asyncio.to_thread(last_sequence)
        await in_another_thread(change)
        status, code = await client.ask()
        closed = await client.wait_closed() if transport == "websocket" and status in (401, 403) else None
        return status, code, closed, await asyncio.to_thread(denials_since, mark)
    finally:
        await client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_revoked_key_binds_the_next_query_on_every_transport(transport, users, priced, live_settings):
    issued = create_api_key(users["user"], "to revoke")
    with instances(2) as urls:
        status, code, closed, denied = asyncio.run(refused_after(
            transport, urls, issued.secret, lambda: revoke_api_key(issued.key)))
    assert (status, code) == (401, "authentication_failed")
    assert closed in (None, 4401) and (transport != "websocket" or closed == 4401)
    assert denied == ["api_key.used_after_revoke"], "one event per refusal, naming what was refused"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_deactivated_owner_binds_the_next_query_on_every_transport(transport, users, priced, live_settings):
    owner = users["user"]
    secret = create_api_key(owner, "owner leaves").secret
    with instances(2) as urls:
        status, code, closed, denied = asyncio.run(refused_after(
            transport, urls, secret, lambda: _save_inactive(owner.pk)))
    assert (status, code) == (401, "authentication_failed")
    assert transport != "websocket" or closed == 4401
    assert denied == ["auth.failed"]


def _save_inactive(pk):
    user = User.objects.get(pk=pk)
    user.is_active = False
    user.save()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_lowered_role_binds_the_next_query_on_every_transport(transport, users, priced, live_settings):
    member = users["user"]
    secret = create_api_key(member, "role lowered", scopes=["use_math_agent"]).secret
    with instances(2) as urls:
        status, code, closed, denied = asyncio.run(refused_after(
            transport, urls, secret, lambda: set_role(User.objects.get(pk=member.pk), "viewer")))
    assert (status, code) == (403, "permission_denied")
    assert transport != "websocket" or closed == 4403
    assert denied == ["permission.denied"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_keys_requests_per_minute_count_on_every_transport(transport, users, priced, live_settings):
    secret = create_api_key(users["user"], "limited", requests_per_minute=2).secret

    async def ask_three(urls):
        client = caller(transport, urls, secret)
        try:
            return [await client.ask() for _ in range(3)], client.closed_with()
        finally:
            await client.close()

    with instances(2) as urls:
        answers, closed = asyncio.run(ask_three(urls))
    assert answers == [(200, None), (200, None), (429, "rate_limited")]
    assert closed is None, "a rate-limited socket stays open"

"""A role deleted, or a permission link changed from either side, binds its members' API keys at once.

The key cache holds each key with its owner's permissions (accounts.services._lookup, 300 s), and
accounts/signals.py drops those copies when what they were computed from changes (docs/design.md
§10.2: "a lowered role binds the next request at once, on every instance"). Deleting a role removes
its links without m2m_changed, and a link changed from its other side (role.user_set.remove,
permission.group_set...) names the role or the permission, not the user: both left the copies
standing. Found by an outside review of the key path.
"""

import asyncio
import json

import httpx
import pytest
import websockets
from django.contrib.auth.models import Group, Permission

from accounts.actions.keys import create_api_key
from accounts.actions.roles import delete_role
from accounts.actions.users import set_role
from accounts.services import authenticate_key, key_permissions
from tests.conftest import require_redis

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _redis():
    require_redis()  # the shared key cache, as in production


def _member_of_a_math_role(users):
    role = Group.objects.create(name="mathematicians")
    role.permissions.set(Permission.objects.filter(codename="use_math_agent"))
    member = users["viewer"]  # a viewer holds no use_math_agent of its own
    set_role(member, "mathematicians")
    return role, member, create_api_key(member, "math key")


def _ask(server, secret, path="/api/v1/query"):
    return httpx.post(server.url + path, headers={"Authorization": f"Bearer {secret}"},
                      json={"query": "What is 2+2?", "agent_type": "math"}, timeout=30)


@pytest.mark.parametrize("on_loop", [True, False])
@pytest.mark.parametrize("path", ["/api/v1/query", "/api/v1/stream"])
def test_a_deleted_role_no_longer_lets_its_members_keys_use_its_agents(asgi_server, users, path, on_loop, settings):
    # Control: accounts.signals._role_deleted (before: 200 with the math answer, for up to 300 s).
    settings.RELAY_ADMIT_ON_LOOP = on_loop
    role, _, issued = _member_of_a_math_role(users)
    assert _ask(asgi_server, issued.secret, path).status_code == 200  # a DB thread reads and caches the key
    assert _ask(asgi_server, issued.secret, path).status_code == 200  # the loop admits it from the copy
    delete_role(role)
    response = _ask(asgi_server, issued.secret, path)
    assert response.status_code == 403, (response.status_code, response.text[:300])


def test_a_deleted_role_binds_the_next_query_on_an_open_websocket(asgi_server, users):
    role, _, issued = _member_of_a_math_role(users)
    url = asgi_server.url.replace("http://", "ws://") + "/ws/chat/"

    async def until_done_or_error(ws):
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if event["type"] in ("done", "error"):
                return event

    async def scenario():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": issued.secret}))
            assert json.loads(await ws.recv())["type"] == "authenticated"
            await ws.send(json.dumps({"type": "query", "query": "What is 2+2?", "agent_type": "math"}))
            before = await until_done_or_error(ws)
            await asyncio.to_thread(delete_role, role)  # committed; the socket stays open
            await ws.send(json.dumps({"type": "query", "query": "What is 3+3?", "agent_type": "math"}))
            return before, await until_done_or_error(ws)

    before, after = asyncio.run(scenario())
    assert before["type"] == "done"
    assert after["type"] == "error" and after["code"] == "permission_denied", after


def test_a_deleted_role_leaves_no_permission_on_the_sync_views_path(users):
    # authenticate_key is what every DRF view's key authentication returns, not only the model calls'.
    role = Group.objects.create(name="exporters")
    role.permissions.set(Permission.objects.filter(codename__in=["export_data", "use_math_agent"]))
    member = users["viewer"]
    set_role(member, "exporters")
    issued = create_api_key(member, "k")
    assert "export_data" in key_permissions(authenticate_key(issued.secret, client_ip="127.0.0.1"))
    delete_role(role)
    assert key_permissions(authenticate_key(issued.secret, client_ip="127.0.0.1")) == set()


@pytest.mark.parametrize("how", ["role.user_set.remove", "role.user_set.clear", "user.user_permissions.remove",
                                 "permission.user_set.clear", "permission.group_set.remove",
                                 "permission deleted"])
def test_a_permission_link_changed_from_either_side_binds_at_once(asgi_server, users, how):
    # Control: accounts.signals._user_links_changed and the permission side of _role_permissions_changed.
    member = users["viewer"]
    permission = Permission.objects.get(codename="use_math_agent")
    role = Group.objects.create(name="mathematicians")
    if how.startswith(("user.", "permission.user_set")):
        member.user_permissions.add(permission)
    else:
        role.permissions.set([permission])
        set_role(member, "mathematicians")
    issued = create_api_key(member, "math key", scopes=["use_math_agent"])
    assert _ask(asgi_server, issued.secret).status_code == 200
    assert _ask(asgi_server, issued.secret).status_code == 200
    {"role.user_set.remove": lambda: role.user_set.remove(member),
     "role.user_set.clear": lambda: role.user_set.clear(),
     "user.user_permissions.remove": lambda: member.user_permissions.remove(permission),
     "permission.user_set.clear": lambda: permission.user_set.clear(),
     "permission.group_set.remove": lambda: permission.group_set.remove(role),
     "permission deleted": lambda: permission.delete()}[how]()
    assert _ask(asgi_server, issued.secret).status_code == 403

"""Keys minted through keys stay under their parent: budgets, rates, revocation (accounts/key_tree.py).

Where the guarantee is about live state (counters, the ledger, the key cache), part of the
traffic goes through a second Relay process on the same PostgreSQL and Redis; in the embedded
mode (state in process by design) this process's own client stands in for it.
"""

import asyncio
import os
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.actions.keys import create_api_key
from audit.models import AuditEvent
from billing.models import Budget, UsageRecord
from tests.billing.test_live_budgets import production_services, start_workers
from tests.conftest import ASGIServer, assert_envelope, require_redis

pytestmark = pytest.mark.django_db(transaction=True)
QUERY = {"query": "2+2", "agent_type": "math", "cache": False}


class Answer:
    def __init__(self, status_code: int, body: dict, headers):
        self.status_code, self.body, self.headers = status_code, body, headers

    def json(self):
        return self.body

    def __getitem__(self, header):
        return self.headers[header]


class Here:
    """This process: Django's test client with a bearer key."""

    def __init__(self):
        self.client = APIClient()

    def call(self, method: str, path: str, secret: str, body: dict | None = None):
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return getattr(self.client, method.lower())(path, body, format="json")


class Elsewhere:
    """Another Relay process (a uvicorn worker) on the same database, cache and ledger."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=60)

    def call(self, method: str, path: str, secret: str, body: dict | None = None):
        response = self.http.request(method, path, json=body, headers={"Authorization": f"Bearer {secret}"})
        return Answer(response.status_code, response.json(), response.headers)


@pytest.fixture
def here():
    return Here()


@pytest.fixture
def elsewhere(transactional_db, here):
    if not production_services():
        yield here
        return
    (worker,) = start_workers(1)
    other = Elsewhere(worker.url)
    yield other
    other.http.close()
    worker.stop()


@pytest.fixture(autouse=True)
def _fresh_token_buckets():
    """In the embedded mode token buckets live in this process, keyed by key id, which SQLite reuses."""
    from billing import ratelimit

    ratelimit._local_buckets.clear()
    yield
    ratelimit._local_buckets.clear()


def mint(via, secret: str, **body) -> dict:
    """A key made through the key `secret` (POST /api/v1/keys/ authenticated by it)."""
    made = via.call("POST", reverse("apikey-list"), secret, {"name": "child", **body})
    assert made.status_code == 201, made.json()
    return made.json()


# --- budgets ---------------------------------------------------------------------------------

def test_a_key_whose_budget_is_spent_cannot_mint_its_way_around_it(users, here, elsewhere):
    parent = create_api_key(users["user"], "parent")
    assert elsewhere.call("POST", reverse("query"), parent.secret, QUERY).status_code == 200  # spent elsewhere
    spent = UsageRecord.objects.get(api_key=parent.key).cost
    Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=parent.key,
                          period="total", limit_usd=spent, hard=True)
    assert_envelope(here.call("POST", reverse("query"), parent.secret, QUERY), 402, "budget_exceeded")

    child = mint(here, parent.secret)
    grandchild = mint(elsewhere, child["key"])
    for via in (here, elsewhere):
        for secret in (child["key"], grandchild["key"]):
            error = assert_envelope(via.call("POST", reverse("query"), secret, QUERY), 402, "budget_exceeded")
            assert "rk_" + parent.key.prefix in error["message"]  # the parent's budget is the one that binds
    assert UsageRecord.objects.count() == 1


def test_a_parents_budget_counts_what_its_children_spend_also_when_rebuilt(users, here, elsewhere):
    from billing.budgets import rebuild_budget

    parent = create_api_key(users["user"], "parent")
    budget = Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=parent.key,
                                   period="monthly", limit_usd=Decimal("5"), hard=True)
    child = mint(here, parent.secret)
    assert elsewhere.call("POST", reverse("query"), child["key"], QUERY).status_code == 200
    child_cost = UsageRecord.objects.get(api_key_id=child["id"]).cost
    assert child_cost > 0
    # The counter rebuilt from usage records (rebuild_ledger, or a ledger that lost its counters).
    _scope, spent = rebuild_budget(budget)
    assert spent == int(child_cost * 10**9)


# --- requests and tokens per minute ------------------------------------------------------------

def test_children_share_their_parents_requests_per_minute(users, here, elsewhere):
    parent = create_api_key(users["user"], "parent", requests_per_minute=4)
    first, second = mint(here, parent.secret)["key"], mint(here, parent.secret)["key"]  # 2 of the parent's 4
    me = reverse("me")
    assert elsewhere.call("GET", me, first).status_code == 200
    assert here.call("GET", me, second).status_code == 200
    # The parent's minute is used up by its children: nobody in the family gets a fifth request.
    for via, secret in ((here, parent.secret), (elsewhere, second), (here, first), (elsewhere, parent.secret)):
        response = via.call("GET", me, secret)
        assert_envelope(response, 429, "rate_limited")
        assert 1 <= int(response["Retry-After"]) <= 60


def test_children_share_their_parents_tokens_per_minute(users, here, elsewhere):
    parent = create_api_key(users["user"], "parent", tokens_per_minute=1000)
    first, second = mint(here, parent.secret)["key"], mint(here, parent.secret)["key"]
    # Input plus the most it may generate is more than a minute's allowance: it takes the whole bucket.
    assert elsewhere.call("POST", reverse("query"), first, {**QUERY, "max_tokens": 1000}).status_code == 200
    # Half a minute's refill would be needed for any of these: the family's minute is used up.
    for via, secret in ((here, second), (elsewhere, parent.secret), (here, first), (elsewhere, second)):
        response = via.call("POST", reverse("query"), secret, {**QUERY, "max_tokens": 500})
        assert_envelope(response, 429, "rate_limited")
        assert int(response["Retry-After"]) >= 1
    assert UsageRecord.objects.count() == 1


def test_concurrent_requests_of_a_family_never_pass_the_parents_rate(users, transactional_db, settings):
    parent = create_api_key(users["user"], "parent", requests_per_minute=5)
    family = [parent.secret] + [create_api_key(users["user"], f"child {i}", parent=parent.key).secret
                                for i in range(3)]
    settings.RELAY_DB_THREAD_SENSITIVE = False  # the production threading: requests really overlap
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    workers = start_workers(2) if production_services() else []
    server = None if workers else ASGIServer().start()
    urls = [worker.url for worker in workers] or [server.url]

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(
                client.get(f"{urls[i % len(urls)]}{reverse('me')}",
                           headers={"Authorization": f"Bearer {family[i % len(family)]}"})
                for i in range(24)))

    try:
        statuses = sorted(response.status_code for response in asyncio.run(burst()))
    finally:
        for worker in workers:
            worker.stop()
        if server:
            server.stop()
    assert statuses == [200] * 5 + [429] * 19


# --- revocation ---------------------------------------------------------------------------------

def test_revoking_a_key_revokes_every_key_below_it_each_audited(users, here, elsewhere):
    owner, me = users["user"], reverse("me")
    parent = create_api_key(owner, "parent")
    child = mint(here, parent.secret)
    grandchild = mint(elsewhere, child["key"])
    unrelated = create_api_key(owner, "unrelated").secret
    for via in (here, elsewhere):  # every key is in the key cache now
        assert {via.call("GET", me, key["key"]).status_code for key in (child, grandchild)} == {200}
    session = APIClient()
    session.force_login(owner)
    rotated = session.post(reverse("apikey-rotate", args=[parent.key.pk])).json()  # rotation keeps the tree
    assert here.call("GET", me, grandchild["key"]).status_code == 200
    assert session.post(reverse("apikey-revoke", args=[parent.key.pk])).status_code == 200

    for via in (elsewhere, here):
        for secret in (rotated["key"], child["key"], grandchild["key"]):
            error = assert_envelope(via.call("GET", me, secret), 401, "authentication_failed")
            assert "revoked" in error["message"]
        assert via.call("GET", me, unrelated).status_code == 200
    revocations = AuditEvent.objects.filter(action="api_key.revoked").values_list("resource", flat=True)
    assert sorted(revocations) == sorted(f"api_key:{pk}" for pk in (parent.key.pk, child["id"], grandchild["id"]))
    listed = {key["id"]: key for key in session.get(reverse("apikey-list")).json()["results"]}
    assert not listed[child["id"]]["is_active"] and listed[grandchild["id"]]["parent"] == child["id"]


def test_a_parent_revoked_by_another_process_stops_its_child_here_at_once(users, here, transactional_db):
    require_redis()
    parent = create_api_key(users["user"], "parent")
    child = mint(here, parent.secret)["key"]
    assert here.call("GET", reverse("me"), child).status_code == 200  # cached here
    db = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    script = ("from accounts.models import APIKey; from accounts.actions.keys import revoke_api_key; "
              f"revoke_api_key(APIKey.objects.get(pk={parent.key.pk}))")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", script], check=True, env=env,
                   cwd=settings.BASE_DIR, capture_output=True, timeout=60)
    assert_envelope(here.call("GET", reverse("me"), child), 401, "authentication_failed")


# --- what a child may be given -------------------------------------------------------------------

def test_a_child_inherits_its_parents_limits_and_cannot_raise_them(users, here):
    from accounts.models import APIKey

    parent = create_api_key(users["user"], "parent", requests_per_minute=50, tokens_per_minute=5000)
    inherited = mint(here, parent.secret)
    assert (inherited["requests_per_minute"], inherited["tokens_per_minute"]) == (50, 5000)
    narrower = mint(here, parent.secret, requests_per_minute=10, tokens_per_minute=100)
    assert (narrower["requests_per_minute"], narrower["tokens_per_minute"]) == (10, 100)

    before = APIKey.objects.count()
    wider = ({"requests_per_minute": 51}, {"tokens_per_minute": 5001},
             {"requests_per_minute": 1_000_000, "tokens_per_minute": 10})
    for body in wider:
        seen = AuditEvent.objects.filter(status="denied", action="permission.denied").count()
        assert_envelope(here.call("POST", reverse("apikey-list"), parent.secret, {"name": "wider", **body}), 403,
                        "permission_denied")
        assert AuditEvent.objects.filter(status="denied", action="permission.denied").count() == seen + 1
    assert APIKey.objects.count() == before
    # Through a key without limits, a child may be given any.
    free = create_api_key(users["user"], "free").secret
    assert mint(here, free, requests_per_minute=7)["requests_per_minute"] == 7


def test_keys_nest_at_most_eight_deep(users, here):
    secret = create_api_key(users["user"], "root").secret
    for _depth in range(8):
        secret = mint(here, secret)["key"]
    error = assert_envelope(here.call("POST", reverse("apikey-list"), secret, {"name": "ninth"}), 400, "invalid")
    assert "8" in error["message"]


def test_a_grandchilds_requests_cost_no_more_queries_than_its_roots(users, here):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    root = create_api_key(users["user"], "root", requests_per_minute=100, tokens_per_minute=100_000)
    Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=root.key,
                          period="monthly", limit_usd=Decimal("5"), hard=True)
    grandchild = mint(here, mint(here, root.secret)["key"])["key"]
    counts = {}
    for name, secret in (("root", root.secret), ("grandchild", grandchild)):
        for path, body in ((reverse("me"), None), (reverse("query"), QUERY)):
            method = "POST" if body else "GET"
            assert here.call(method, path, secret, body).status_code == 200  # caches warm
            with CaptureQueriesContext(connection) as queries:
                assert here.call(method, path, secret, body).status_code == 200
            counts[name, path] = len(queries)
    assert counts["grandchild", reverse("me")] == counts["root", reverse("me")]
    assert counts["grandchild", reverse("query")] == counts["root", reverse("query")]


def test_narrowing_a_key_narrows_every_key_minted_below_it_at_once(users, here):
    # Control: a key's agents, models, scopes and address ranges are cut to its ancestors' where they
    # are used (accounts.key_tree.listed/permits/scopes, authenticate_key), not only when it is minted.
    from accounts.actions.keys import save_api_key
    from accounts.models import APIKey

    parent = create_api_key(users["user"], "parent")
    grandchild = mint(here, mint(here, parent.secret)["key"])["key"]
    math_on = {**QUERY, "model": "local-mini"}
    assert here.call("POST", reverse("query"), grandchild, math_on).status_code == 200

    def narrow(**limits):
        key = APIKey.objects.get(pk=parent.key.pk)
        for name, value in {"allowed_agents": [], "allowed_models": [], "allowed_ips": [],
                            "scopes": list(parent.key.scopes), **limits}.items():
            setattr(key, name, value)
        save_api_key(key)

    narrow(allowed_agents=["rag"])
    assert_envelope(here.call("POST", reverse("query"), grandchild, math_on), 403, "permission_denied")
    narrow(allowed_models=["local-large"])
    assert_envelope(here.call("POST", reverse("query"), grandchild, math_on), 403, "permission_denied")
    narrow(scopes=[s for s in parent.key.scopes if s != "use_math_agent"])
    assert_envelope(here.call("POST", reverse("query"), grandchild, math_on), 403, "permission_denied")
    narrow(allowed_ips=["10.0.0.0/8"])
    assert_envelope(here.call("GET", reverse("me"), grandchild), 401, "authentication_failed")
    narrow()  # and widened again, the keys below follow
    assert here.call("POST", reverse("query"), grandchild, math_on).status_code == 200

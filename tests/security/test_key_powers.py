"""A credential never gains power through another credential (accounts.services.key_within).

A key sees, rotates and revokes only keys whose powers are within its own (itself and the keys
minted through it included); any other key of its owner is 404, audited as denied. A session or
JWT acts with the user's powers: every key of the user.
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actions.keys import create_api_key
from accounts.models import APIKey
from billing.models import Budget
from tests.security.test_escalation import Denials, refused

pytestmark = pytest.mark.django_db
OFFICE = "10.1.2.3"


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}", REMOTE_ADDR=OFFICE)
    return client


def listed(client) -> set[int]:
    response = client.get(reverse("apikey-list"), {"limit": 500})
    assert response.status_code == 200, response.content
    return {key["id"] for key in response.json()["results"]}


def unchanged(key: APIKey) -> bool:
    now = APIKey.objects.get(pk=key.pk)
    return now.prefix == key.prefix and now.secret_hash == key.secret_hash and now.revoked_at is None


def test_a_key_scoped_to_one_agent_cannot_see_rotate_or_revoke_its_owners_admin_key(users, denials):
    # Control: APIKeyViewSet.get_queryset keeps the keys within the acting key (key_within) +
    # the hidden-object audit of audit/refusals.py.
    admin = users["admin"]
    full = create_api_key(admin, "full admin")
    agent = create_api_key(admin, "math only", scopes=["use_math_agent"], allowed_agents=["math"])
    narrower = create_api_key(admin, "narrower", scopes=["use_math_agent"], allowed_agents=["math"],
                              allowed_ips=["10.0.0.0/8"], expires_at=timezone.now() + timedelta(days=1))
    wider = create_api_key(admin, "math and metrics", scopes=["use_math_agent", "view_metrics"],
                           allowed_agents=["math"]).key
    client = bearer(agent.secret)
    child = client.post(reverse("apikey-list"), {"name": "child"}, format="json").json()

    assert listed(client) == {agent.key.pk, narrower.key.pk, child["id"]}
    denials.seen = Denials._last()
    for target in (full.key, wider):
        refused(client.get(reverse("apikey-detail", args=[target.pk])), 404, "not_found", denials=denials,
                actor=admin, action="permission.hidden_object")
        refused(client.post(reverse("apikey-rotate", args=[target.pk])), 404, "not_found", denials=denials,
                actor=admin, action="permission.hidden_object")
        refused(client.post(reverse("apikey-revoke", args=[target.pk])), 404, "not_found", denials=denials,
                actor=admin, action="permission.hidden_object")
        assert unchanged(target)
    assert bearer(full.secret).get(reverse("me")).status_code == 200

    # What is within it, it manages: a narrower key, the key it minted, itself.
    assert client.post(reverse("apikey-rotate", args=[narrower.key.pk])).status_code == 200
    assert client.post(reverse("apikey-revoke", args=[child["id"]])).json()["is_active"] is False
    assert client.get(reverse("apikey-detail", args=[agent.key.pk])).status_code == 200


@pytest.mark.parametrize("via", ["jwt", "session"])
def test_the_owner_signed_in_sees_and_manages_every_key(via, users, client_for):
    admin = users["admin"]
    keys = [create_api_key(admin, "full admin").key,
            create_api_key(admin, "math only", scopes=["use_math_agent"], allowed_agents=["math"]).key]
    child = bearer(create_api_key(admin, "parent").secret).post(reverse("apikey-list"), {"name": "child"},
                                                                  format="json").json()
    client = client_for(admin, via)
    assert listed(client) == set(APIKey.objects.filter(owner=admin).values_list("pk", flat=True))
    assert child["id"] in listed(client)
    rotated = client.post(reverse("apikey-rotate", args=[keys[0].pk]))
    assert rotated.status_code == 200 and rotated.json()["key"].startswith("rk_")
    if via == "session":  # the console page lists them and acts through the same API
        page = client.get("/keys/").content.decode()
        assert all(key.name in page for key in keys) and "child" in page


# Per power: (the acting key's restriction, a key outside it, a key within it). A key outside
# differs from the acting key only in that power.
POWERS = {
    "scopes": ({"scopes": ["use_math_agent"]}, {}, {"scopes": []}),
    "agents": ({"allowed_agents": ["math"]}, {}, {"allowed_agents": ["math"]}),
    "models": ({"allowed_models": ["local-mini"]}, {"allowed_models": ["local-mini", "local-large"]},
               {"allowed_models": ["local-mini"]}),
    "addresses": ({"allowed_ips": ["10.0.0.0/8"]}, {"allowed_ips": ["10.0.0.0/8", "192.168.0.0/16"]},
                  {"allowed_ips": ["10.1.0.0/16"]}),
    "expiry": ({"expires_at": 2}, {"expires_at": 3}, {"expires_at": 1}),
    "requests_per_minute": ({"requests_per_minute": 100}, {}, {"requests_per_minute": 50}),
    "tokens_per_minute": ({"tokens_per_minute": 10_000}, {"tokens_per_minute": 20_000},
                          {"tokens_per_minute": 10_000}),
    "key budget": ({}, {}, {}),
}


def _key(owner, name, grants):
    grants = dict(grants)
    if "expires_at" in grants:
        grants["expires_at"] = timezone.now() + timedelta(days=grants["expires_at"])
    return create_api_key(owner, name, **grants)


@pytest.mark.parametrize("power", POWERS)
def test_a_key_never_reaches_a_key_with_more_of_any_power(power, users, denials):
    # Control: accounts.services.key_within, one rule per power.
    owner = users["user"]
    restriction, wider, narrower = POWERS[power]
    acting, outside, inside = _key(owner, "acting", restriction), _key(owner, "outside", wider), None
    if power == "key budget":  # a budget binds only the keys under it: the acting key's child, not a sibling
        Budget.objects.create(organization=owner.organization, scope="api_key", api_key=acting.key,
                              period="monthly", limit_usd="1.00", hard=True)
        inside = bearer(acting.secret).post(reverse("apikey-list"), {"name": "inside"}, format="json").json()["id"]
    else:
        inside = _key(owner, "inside", narrower).key.pk
    client = bearer(acting.secret)
    assert listed(client) == {acting.key.pk, inside}
    denials.seen = Denials._last()
    refused(client.post(reverse("apikey-rotate", args=[outside.key.pk])), 404, "not_found", denials=denials,
            action="permission.hidden_object")
    assert unchanged(outside.key)
    assert client.post(reverse("apikey-rotate", args=[inside])).status_code == 200


@pytest.fixture
def denials(db):
    return Denials()

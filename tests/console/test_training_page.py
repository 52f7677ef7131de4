"""The Training console page (training/views.py): only for manage_training, consent changed only by admins."""

import json
import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from training.actions.consent import set_consent

pytestmark = pytest.mark.django_db


def grant(user, codename):
    user.user_permissions.add(Permission.objects.get(content_type__app_label="accounts", codename=codename))
    return type(user).objects.get(pk=user.pk)  # fresh: the permission cache


def data(html, name):
    return json.loads(re.search(rf'<script id="{name}" type="application/json">(.*?)</script>', html, re.S).group(1))


def test_an_admin_opens_the_page_with_the_consent_switch(client, users):
    client.force_login(users["admin"])
    html = client.get(reverse("training")).content.decode()
    assert data(html, "consent-data") == {"enabled": False, "changed_by": None, "changed_at": None}
    assert 'id="consent-toggle"' in html and 'data-is-admin="1"' in html and 'data-can-export="1"' in html
    choices = data(html, "choices-data")
    assert {"math", "general"} <= {a["name"] for a in choices["agents"]}
    assert "complete" in choices["statuses"] and choices["feedback"] == ["any", "positive", "negative", "rated"]
    assert "admin" in [u["name"] for u in choices["users"]]


def test_the_page_shows_who_turned_consent_on(client, users):
    set_consent(users["admin"].organization, enabled=True, actor=users["admin"])
    client.force_login(users["admin"])
    consent = data(client.get(reverse("training")).content.decode(), "consent-data")
    assert consent["enabled"] is True and consent["changed_by"] == "admin" and consent["changed_at"]


@pytest.mark.parametrize("role", ["user", "viewer", "api_user"])
def test_without_manage_training_the_page_is_refused_and_not_listed(client, users, role):
    client.force_login(users[role])
    response = client.get(reverse("training"))
    assert response.status_code == 403 and "can't open this page" in response.content.decode()
    assert 'data-nav="training"' not in client.get(reverse("home")).content.decode()


def test_a_holder_who_is_not_an_admin_sees_consent_read_only_and_no_downloads(client, users):
    user = grant(users["user"], "manage_training")
    client.force_login(user)
    response = client.get(reverse("training"))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="consent-toggle"' not in html and "Only an organization admin can change this." in html
    assert 'data-is-admin="0"' in html and 'data-can-export="0"' in html
    assert 'data-nav="training"' in client.get(reverse("home")).content.decode()


def test_the_anonymous_visitor_is_sent_to_sign_in(client):
    response = client.get(reverse("training"))
    assert response.status_code == 302 and response["Location"].startswith("/login/")

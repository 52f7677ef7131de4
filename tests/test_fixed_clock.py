"""fixed_now (tests/conftest.py) moves the clock for the code under test wherever it runs."""

from datetime import timedelta

import httpx
import pytest

from accounts.actions.keys import create_api_key
from tests.conftest import FIRST_OF_MONTH


def _stored_at(fixed_now):
    from agents.models import Message
    from billing.models import UsageRecord

    record = UsageRecord.objects.get()
    answer = Message.objects.get(role="assistant")
    for moment in (record.created_at, answer.created_at):
        assert fixed_now <= moment < fixed_now + timedelta(minutes=5), moment


@pytest.mark.django_db
def test_async_views_and_their_database_threads_see_the_fixed_clock(fixed_now, users, client_for):
    assert fixed_now == FIRST_OF_MONTH
    response = client_for(users["user"], via="api_key").post(
        "/api/v1/query", {"agent_type": "math", "query": "1+1"}, format="json")
    assert response.status_code == 200, response.content
    _stored_at(fixed_now)


@pytest.mark.django_db(transaction=True)
def test_a_live_server_sees_the_fixed_clock(fixed_now, asgi_server, users):
    from tests.billing.conftest import seed_prices

    seed_prices()
    key = create_api_key(users["user"], "k").secret
    response = httpx.post(f"{asgi_server.url}/api/v1/query", json={"agent_type": "math", "query": "1+1"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert response.status_code == 200, response.text
    _stored_at(fixed_now)

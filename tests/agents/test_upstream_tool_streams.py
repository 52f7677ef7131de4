"""A model writing a long tool call is answering, not dead, and what it streamed is billed; an
upstream's failure reaches the client without the upstream's addresses or error pages.

Controls: agents.providers.base.ToolCallDelta, yielded per streamed chunk of a call by
agents.providers.openai_compat and counted by agents.router.calls (the first-token wait ends,
the deployment is credited the tokens) and by agents.upstream (billed when the round is cut);
openai_compat's fixed messages for transport and 5xx failures (details in the server's log).
"""

from decimal import Decimal

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents.actions.endpoints import create_endpoint
from agents.providers.catalog import forget_catalog, resolve
from agents.router import snapshot
from billing.models import ModelPrice, UsageRecord
from tests.support.ports import free_port

pytestmark = pytest.mark.django_db(transaction=True)

WRITE = [{"type": "function", "function": {"name": "write", "description": "Write text.",
                                           "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}]


def chat(server, secret: str, **body) -> httpx.Response:
    body = {"model": "fake-large", "messages": [{"role": "user", "content": "Write."}], **body}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"},
                      timeout=60)


def endpoint(base_url: str, **policy) -> None:
    create_endpoint("fake-large", deployments=[{"name": "primary", "base_url": base_url, "upstream_model": "fake-large"}],
                    **policy)
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    forget_catalog()


def test_a_long_tool_call_does_not_take_its_deployment_out_for_everyone(asgi_server, users, other_users, fake_upstream):
    # The arguments stream for about two seconds, twice the first-token timeout: before the control
    # each request was a 504, the deployment's failures opened its breaker for every tenant, and the
    # streamed arguments were not billed.
    endpoint(fake_upstream.base_url, first_token_timeout_seconds=1.0, allowed_fails=2, num_retries=0,
             cooldown_seconds=60)
    fake_upstream.configure(tool_calls=[{"name": "write", "arguments": {"text": "word " * 150}}], tps=200,
                            tool_arg_chunk=3)
    caller = create_api_key(users["user"], "long calls")
    for _ in range(2):
        response = chat(asgi_server, caller.secret, tools=WRITE)
        assert response.status_code == 200, response.content[:300]
        assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "write"
    assert snapshot(resolve("fake-large"))[0]["state"] == "closed"
    assert [record.output_tokens > 100 for record in UsageRecord.objects.filter(api_key=caller.key)] == [True, True]
    fake_upstream.configure(tool_calls=None, tps=0)
    other = create_api_key(other_users["user"], "another tenant")
    assert chat(asgi_server, other.secret).status_code == 200


def test_an_upstream_failure_does_not_tell_the_client_where_the_upstream_is(asgi_server, users, fake_upstream):
    port = free_port()  # nothing listens there
    endpoint(f"http://127.0.0.1:{port}/v1", num_retries=0)
    caller = create_api_key(users["user"], "refused")
    response = chat(asgi_server, caller.secret)
    assert response.status_code == 502, response.content[:300]
    assert "127.0.0.1" not in response.text and str(port) not in response.text

"""/metrics: who may read it, what it says, and that clients cannot blow up its label sets."""

from decimal import Decimal

import pytest
from django.urls import reverse

from relay.observability import metrics
from tests.conftest import assert_envelope
from tests.observability.conftest import series_of, value

pytestmark = pytest.mark.django_db


def scrape(client, token) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


def test_scraper_token_reads_the_metrics_of_design_section_8(client, metrics_token):
    client.get("/healthz")
    text = scrape(client, metrics_token)
    assert value(text, "http_requests_total", method="GET", endpoint="/healthz", status="200") >= 1
    for family in ("agent_requests_total", "token_usage_total", "api_cost_dollars_total", "tool_calls_total",
                   "budget_rejections_total", "agent_quality_score_bucket", "tool_duration_seconds_bucket",
                   "stream_time_to_first_token_seconds_bucket", "http_request_duration_seconds_bucket",
                   "active_sessions", "django_http_requests_latency_seconds_by_view_method_bucket"):
        assert series_of(text, family), f"{family} missing from /metrics"
    buckets = {s["le"] for s in series_of(text, "agent_quality_score_bucket") if s["agent_type"] == "math"}
    assert buckets == {"0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "1.0", "+Inf"}


def test_anonymous_and_a_wrong_token_are_refused(client, metrics_token):
    assert_envelope(client.get("/metrics"), 401, "not_authenticated")
    assert_envelope(client.get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token"), 401)
    assert_envelope(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}x"), 401)


@pytest.mark.parametrize("via", ["session", "jwt", "api_key"])
def test_organization_users_are_refused_even_with_view_metrics(users, client_for, metrics_token, via):
    # /metrics is platform-wide (every organization's budget ratios, the whole platform's cost): an
    # organization's viewer or admin reads their own figures through the cost API, never here.
    for role in ("viewer", "admin", "user", "api_user"):
        assert_envelope(client_for(users[role], via=via).get("/metrics"), 403, "permission_denied")


def test_an_organization_admin_with_admin_site_access_is_still_refused(users, client_for):
    admin = users["admin"]
    admin.is_staff = True  # the admin console for their own organization does not make them an operator
    admin.save(update_fields=["is_staff"])
    assert_envelope(client_for(admin).get("/metrics"), 403, "permission_denied")


@pytest.mark.parametrize("via", ["session", "jwt", "api_key"])
def test_the_token_and_platform_staff_read_the_metrics(client, client_for, metrics_token, via):
    from accounts.models import User

    assert b"http_requests_total" in client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}").content
    root = User.objects.create_superuser("root", "root@example.com", "correct horse battery staple")
    # A staff member outside every organization operates the platform; their keys hold no Relay
    # permission (they have none to give), so they read through a session or a JWT.
    operator = User.objects.create_user("operator", "op@example.com", "correct horse battery staple", is_staff=True)
    for person in (root, operator) if via != "api_key" else (root,):
        response = client_for(person, via=via).get("/metrics")
        assert response.status_code == 200, (person.username, response.content[:300])
        assert b"http_requests_total" in response.content


def test_no_token_configured_means_only_platform_staff(client, settings):
    settings.RELAY_METRICS_TOKEN = ""
    assert_envelope(client.get("/metrics", HTTP_AUTHORIZATION="Bearer "), 401)


def test_a_thousand_invented_urls_and_models_do_not_create_series(client, users, client_for, metrics_token):
    client_for(users["user"]).post(reverse("query"), {"query": "1+1", "agent_type": "math", "model": "x"},
                                   format="json")
    before = scrape(client, metrics_token)
    caller = client_for(users["user"], via="api_key")
    signed_in = client_for(users["user"])
    for i in range(800):  # 1,000 distinct URLs; unmatched ones are the cheap kind to send
        client.get(f"/no/such/page-{i}/")
    for i in range(200):
        signed_in.get(f"/api/v1/conversations/{i:08d}-0000-0000-0000-000000000000/")  # 404: one route pattern
    for i in range(1000):
        metrics.record_run(agent="math", model=f"invented-model-{i}", status="complete", input_tokens=1,
                           output_tokens=1, cost=Decimal("0.000001"), quality=1.0, ttft_ms=5)
    for i in range(50):  # the real path refuses unknown models before anything is counted
        response = caller.post(reverse("query"), {"query": "1+1", "agent_type": "math", "model": f"m-{i}"},
                               format="json")
        assert response.status_code == 400
    after = scrape(client, metrics_token)

    grown = {name: len(series_of(after, name)) - len(series_of(before, name))
             for name in ("http_requests_total", "http_request_duration_seconds_count", "token_usage_total",
                          "api_cost_dollars_total", "agent_requests_total")}
    # Three kinds of request were sent (unmatched, a conversation, a refused query): at most one new
    # series each, however many distinct URLs and models they carried.
    assert all(growth <= 3 for growth in grown.values()), grown
    endpoints = {s["endpoint"] for s in series_of(after, "http_requests_total")}
    assert "unmatched" in endpoints
    conversation_labels = {e for e in endpoints if e.startswith("/api/v1/conversations/")}
    assert "/api/v1/conversations/(?P<pk>[^/.]+)/$" in conversation_labels
    assert conversation_labels <= {"/api/v1/conversations/(?P<pk>[^/.]+)/$", "/api/v1/conversations/$"}
    assert not any("page-" in e or "0000" in e for e in endpoints)
    assert not any(s["model"].startswith(("invented", "m-")) for s in series_of(after, "token_usage_total"))
    assert value(after, "token_usage_total", model="other", type="input") >= 1000
    # 1,000 URLs and models later the exposition has grown by a few series, not by thousands (its
    # absolute size depends on what earlier tests in this process recorded).
    assert len(after) - len(before) < 30_000


def test_runs_tools_and_budget_refusals_are_recorded_where_they_happen(users, client_for, metrics_token, client,
                                                                      monkeypatch):
    from billing import metrics as budgets

    monkeypatch.setattr(budgets, "CACHE_SECONDS", 0)
    before = scrape(client, metrics_token)
    user = client_for(users["user"], via="api_key")
    response = user.post(reverse("query"), {"query": "integrate x**2", "agent_type": "math", "cache": False}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "complete"
    admin = client_for(users["admin"])
    budget = admin.post(reverse("costs-budget"), {"scope": "user", "target": users["user"].pk, "period": "monthly",
                                                  "limit_usd": "0.000001", "hard": True}, format="json")
    assert budget.status_code in (200, 201), budget.content
    refused = user.post(reverse("query"), {"query": "1+1", "agent_type": "math"}, format="json")
    assert_envelope(refused, 402, "budget_exceeded")
    after = scrape(client, metrics_token)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    usage = response.json()["usage"]
    assert delta("agent_requests_total", agent_type="math", status="complete") == 1
    assert delta("agent_requests_total", agent_type="math", status="budget_exceeded") == 1
    assert delta("budget_rejections_total", scope="user") == 1
    assert delta("tool_calls_total", tool_name="calculator", status="done") == 1
    assert delta("token_usage_total", type="output") == usage["output_tokens"]
    assert delta("api_cost_dollars_total", agent_type="math") == pytest.approx(float(Decimal(usage["cost"])))
    assert delta("agent_quality_score_count", agent_type="math") == 1
    assert delta("stream_time_to_first_token_seconds_count", agent_type="math") == 1
    assert delta("http_requests_total", endpoint="/api/v1/query", method="POST", status="402") == 1
    budgets = series_of(after, "budget_usage_ratio")
    assert any(s["scope"] == "user" and s["period"] == "monthly" for s in budgets), budgets


def test_recording_can_be_switched_off(client, metrics_token, settings):
    settings.RELAY_METRICS_ENABLED = False
    before = value(scrape(client, metrics_token), "http_requests_total", endpoint="/healthz")
    client.get("/healthz")
    assert value(scrape(client, metrics_token), "http_requests_total", endpoint="/healthz") == before

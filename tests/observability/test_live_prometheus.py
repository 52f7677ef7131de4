"""A real Prometheus scrapes a live Relay; every dashboard panel and every alert returns data.

Relay serves over real sockets (asgi_server) and gets traffic through every agent, including
an upstream failure, a cancelled stream and a budget refusal. Prometheus runs with the
repository's config (its relay job pointed at the test instance, 1 s scrape and rule intervals)
and rules. Then every panel query of every dashboard (Grafana variables substituted as in
tests/observability/prom.py) must return at least one series with a real number, and for every
alert `<quantity> <op> <threshold>` the full expression must evaluate and the quantity must return
series: a healthy system does not fire alerts, so the quantity is what proves the alert's
metrics exist with the labels it groups by (promtool unit tests prove that each one fires).
"""

import io
import math
import time

import httpx
import pytest
from django.urls import reverse

from accounts.actions.keys import create_api_key
from tests.conftest import require
from tests.observability.prom import (
    ALERT_SHAPE,
    Prometheus,
    alert_rules,
    dashboard_queries,
    render_config,
    tool,
    variable_queries,
)

pytestmark = pytest.mark.timeout(240)


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _stream_until_tokens(client, body: dict, tokens: int) -> None:
    """Open an SSE stream and hang up after `tokens` tokens: Relay stores the run as cancelled."""
    seen = 0
    with client.stream("POST", "/api/v1/stream", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            seen += line.startswith('data: {"type": "token"')
            if seen >= tokens:
                return


def drive_traffic(server, users, fake_upstream, upstream_model) -> None:
    def client(user):
        key = create_api_key(user, "observability").secret
        return httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"})

    user, admin, limited = client(users["user"]), client(users["admin"]), client(users["api_user"])
    for agent, query in (("math", "integrate x**2"), ("code", "print(6 * 7)"), ("rag", "How do budgets work?"),
                         ("general", "What is Relay?")):
        # The embedded engine runs the agents' tools (the upstream model would be the default);
        # cache off, or a cached answer would be replayed without running them.
        response = user.post("/api/v1/query", json={"query": query, "agent_type": agent, "cache": False,
                                                     "model": "local-mini"})
        assert response.status_code == 200, response.text
    vision = user.post("/api/v1/vision/analyze", files={"image": ("red.png", _png(), "image/png")},
                       data={"question": "Which colour?"})
    assert vision.status_code == 200, vision.text
    with user.stream("POST", "/api/v1/stream", json={"query": "2+2", "agent_type": "math", "model": "local-mini"}) as response:
        assert response.status_code == 200 and '"type": "done"' in response.read().decode()

    # Through the upstream model's deployment: an answer (the deployment panels' successes and time
    # to first token), a cancelled stream, then failures. Failing last: enough failures put the
    # deployment in cooldown, and nothing after this asks it again.
    answered = user.post("/api/v1/query", json={"query": "good morning", "agent_type": "general",
                                                "model": upstream_model, "cache": False})
    assert answered.status_code == 200 and answered.json()["status"] == "complete", answered.text
    fake_upstream.configure(tps=50, tokens=200)
    _stream_until_tokens(user, {"query": "a long story", "agent_type": "general", "model": upstream_model}, 2)
    assert fake_upstream.wait_for_disconnect(timeout=10) is not None
    fake_upstream.reset()
    fake_upstream.fail_next(50, 500)  # the upstream model fails: the run ends with status error
    failed = user.post("/api/v1/query", json={"query": "hello", "agent_type": "general", "model": upstream_model})
    assert failed.status_code == 200 and failed.json()["status"] == "error", failed.text
    fake_upstream.reset()

    budget = admin.post(reverse("costs-budget"), json={
        "scope": "user", "target": users["api_user"].pk, "period": "monthly", "limit_usd": "0.000001", "hard": True,
        "alert_thresholds": [50, 80, 100]})
    assert budget.status_code in (200, 201), budget.text
    refused = limited.post("/api/v1/query", json={"query": "1+1", "agent_type": "math"})
    assert refused.status_code == 402, refused.text
    assert user.get("/api/v1/no-such-endpoint").status_code == 404
    assert httpx.get(f"{server.url}/api/v1/me").status_code == 401


def _has_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def test_every_panel_and_alert_returns_data_from_a_real_prometheus(asgi_server, users, metrics_token, fake_upstream,
                                                                   upstream_model, tmp_path, monkeypatch):
    from billing import metrics as budgets

    monkeypatch.setattr(budgets, "CACHE_SECONDS", 0)  # scrapes every second must see the new budget
    require(tool("prometheus") is not None, "prometheus is not installed (Debian package prometheus)")
    config = render_config(tmp_path, asgi_server.url.removeprefix("http://"), metrics_token)
    prometheus = Prometheus(config, tmp_path)
    try:
        prometheus.wait_until('up{job="relay"}', lambda r: r and r[0]["value"][1] == "1")
        drive_traffic(asgi_server, users, fake_upstream, upstream_model)
        # A scrape before and after the traffic, so rates and increases over it are not zero.
        prometheus.wait_until('sum(increase(budget_rejections_total{job="relay"}[1m]))',
                              lambda r: r and float(r[0]["value"][1]) > 0)
        prometheus.wait_until('sum(increase(agent_requests_total{job="relay", status="cancelled"}[1m]))',
                              lambda r: r and float(r[0]["value"][1]) > 0)
        prometheus.wait_until('count(budget_usage_ratio{job="relay"})', bool)
        _assert_rules_evaluate(prometheus)

        problems = []
        for dashboard, title, expr in dashboard_queries():
            result = prometheus.query(expr)
            if not _has_number(result):  # a scrape missed on a loaded machine marks a gauge stale: await it, bounded
                try:
                    result = prometheus.wait_until(expr, _has_number, timeout=30)
                except AssertionError:
                    problems.append(f"{dashboard} / {title}: {'no series' if not result else 'only NaN'}: {expr}")
        for dashboard, name, selector, label in variable_queries():
            if not any(label in s["metric"] for s in prometheus.query(selector)):
                problems.append(f"{dashboard} variable {name}: no {label} in {selector}")
        for rule in alert_rules():
            prometheus.query(rule["expr"])  # the whole expression evaluates (it may be empty: healthy)
            quantity = ALERT_SHAPE.match(rule["expr"].strip()).group("quantity")
            try:  # a collector read at scrape time may miss one scrape on a loaded machine: await its series
                prometheus.wait_until(quantity, bool, timeout=30)
            except AssertionError:
                problems.append(f"alert {rule['alert']}: its quantity returns no series: {quantity}")
        assert not problems, "\n".join(problems)
        assert len(dashboard_queries()) >= 40
    finally:
        prometheus.stop()


def _assert_rules_evaluate(prometheus) -> None:
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        assert time.monotonic() < deadline, "rules were never evaluated"
        time.sleep(0.2)
    assert len(rules) == len(alert_rules())
    broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not broken, broken

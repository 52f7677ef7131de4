"""The Prometheus config, alert rules and Grafana dashboards in platform/ are valid and consistent."""

import json
import subprocess

import pytest

from tests.conftest import require
from tests.observability.prom import ALERT_SHAPE, DASHBOARDS, PROMETHEUS_DIR, alert_rules, render_config, tool


def promtool(*args) -> subprocess.CompletedProcess:
    require(tool("promtool") is not None, "promtool is not installed (Debian package prometheus)")
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config_as_shipped_and_as_rendered(tmp_path):
    shipped = promtool("check", "config", "--syntax-only", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    rendered = promtool("check", "config", str(render_config(tmp_path, "127.0.0.1:8000", "secret")))
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr  # includes the rule files


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    checked = promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(PROMETHEUS_DIR / "tests" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_a_runbook_and_the_documented_shape():
    unit_tests = (PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text()
    operations = (PROMETHEUS_DIR.parents[1] / "docs" / "operations.md").read_text().lower()
    names = [rule["alert"] for rule in alert_rules()]
    assert {"RelayHighErrorRate", "RelayHighLatencyP95", "RelaySlowTimeToFirstToken", "RelayBudgetExhaustionForecast",
            "RelayLowQualityScore", "RelayInstanceDown", "RelayLedgerUnavailable"} <= set(names)
    for rule in alert_rules():
        assert ALERT_SHAPE.match(rule["expr"].strip()), f"{rule['alert']}: not `<quantity> <op> <threshold>`"
        assert f"alertname: {rule['alert']}\n" in unit_tests, f"{rule['alert']} has no promtool unit test"
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"### {anchor}" in operations, f"{rule['alert']}: docs/operations.md has no section {anchor}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_use_variables_not_a_particular_grafana(path):
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            expr = target["expr"]
            if "budget_usage_ratio" not in expr:  # budgets are per deployment, not per instance
                assert 'job="$job"' in expr and 'instance=~"$instance"' in expr, (panel["title"], expr)
        if not panel.get("targets"):
            assert panel["type"] in ("alertlist", "text", "row"), panel["title"]


def test_five_dashboards_are_provisioned():
    assert sorted(json.loads(p.read_text())["title"] for p in DASHBOARDS) == [
        "Relay / Agent Performance", "Relay / Cost Analysis", "Relay / Quality Metrics", "Relay / System Overview",
        "Relay / Tool Execution"]
    provider = (PROMETHEUS_DIR.parent / "grafana" / "provisioning" / "dashboards" / "relay.yml").read_text()
    assert "/var/lib/grafana/dashboards/relay" in provider

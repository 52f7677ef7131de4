"""The repository's Prometheus config and rules, rendered for a test, and a real Prometheus to run them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "platform" / "prometheus"
DASHBOARDS = sorted((ROOT / "platform" / "grafana" / "dashboards").glob("*.json"))
# Grafana's built-in variables, as Grafana would expand them for a 1-hour view; the dashboards'
# own variables as "job relay, all instances".
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$job": "relay",
             "$instance": ".*", "${datasource}": ""}
# `<quantity> <comparison> <threshold>`: what every alert expression looks like (alerts.yml header).
ALERT_SHAPE = re.compile(r"^(?P<quantity>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+)\s*$", re.S)


def tool(name: str) -> str | None:
    return shutil.which(name)


def render_config(tmp_path: Path, target: str, token: str, interval: str = "1s") -> Path:
    """platform/prometheus/prometheus.yml with its relay job pointed at target and a fast interval."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    token_file = tmp_path / "relay_metrics_token"
    token_file.write_text(token)
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "relay"]
    jobs[0]["static_configs"] = [{"targets": [target]}]
    jobs[0]["authorization"]["credentials_file"] = str(token_file)
    jobs[0]["scrape_timeout"] = interval
    config["scrape_configs"] = jobs
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alert_rules() -> list[dict]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL with variables substituted) for every panel target."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], substitute(target["expr"])))
    return found


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, series selector, label) for every label_values() variable."""
    found = []
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            found.append((path.name, variable["name"], substitute(match.group(1)), match.group(2)))
    return found


class Starting(Exception):
    """Prometheus answers 503 (not JSON) until its storage is open."""


class Prometheus:
    """A real Prometheus on 127.0.0.1 with its own storage, stopped on exit."""

    def __init__(self, config: Path, tmp_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        if response.status_code == 503:
            raise Starting(response.text[:200])
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def wait_until(self, expr: str, predicate, timeout: float = 60) -> list[dict]:
        """Poll expr until predicate(result) holds (the server starting counts as not yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.logs()}")
            try:
                result = self.query(expr)
            except (httpx.TransportError, Starting):
                result = None
            if result is not None and predicate(result):
                return result
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expr!r}; log: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

"""The metrics of docs/design.md section 8, and the helpers that record them where events happen.

Every helper is in-memory arithmetic on prometheus_client objects (with PROMETHEUS_MULTIPROC_DIR
set, an mmap'ed file per process: still no system call per update), so the runner may call them
per run without I/O. Labels stay bounded: agents, tools and models are checked against what
Relay knows and collapse into "other"; HTTP endpoints are route patterns (middleware.py).
Set RELAY_METRICS_ENABLED=0 to turn recording off (the overhead benchmark compares both).
"""

from __future__ import annotations

import functools
import threading
import time

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OTHER = "other"
QUALITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Run outcomes (billing.services.STATUSES without the crash-recovery one) plus the two refusals
# that happen before a run starts and that operators alert on.
RUN_STATUSES = ("complete", "cancelled", "error", "budget_stop")
REFUSALS = ("budget_exceeded", "ledger_unavailable", "busy")
BUDGET_SCOPES = ("organization", "team", "user", "api_key")
TOOL_STATUSES = ("done", "error")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

http_requests_total = Counter(
    "http_requests_total", "HTTP responses by method, route pattern and status code.",
    ["method", "endpoint", "status"])
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds",
    "Time from request to response headers, by method and route pattern (streams: until they start).",
    ["method", "endpoint"])
agent_requests_total = Counter(
    "agent_requests_total", "Agent runs by outcome, and requests refused before running (budget, ledger).",
    ["agent_type", "status"])
agent_quality_score = Histogram(
    "agent_quality_score", "Automatic quality score of completed answers (0..1).",
    ["agent_type"], buckets=QUALITY_BUCKETS)
token_usage_total = Counter(
    "token_usage_total", "Tokens billed, by model and type (input or output).", ["model", "type"])
api_cost_dollars_total = Counter(
    "api_cost_dollars_total", "USD billed for agent runs, by model and agent.", ["model", "agent_type"])
active_sessions = Gauge(
    "active_sessions", "Open streaming sessions: SSE streams and WebSocket connections.",
    multiprocess_mode="livesum")
tool_calls_total = Counter(
    "tool_calls_total", "Tool calls by tool and outcome (done or error).", ["tool_name", "status"])
tool_duration_seconds = Histogram(
    "tool_duration_seconds", "Tool call duration.", ["tool_name"], buckets=TOOL_BUCKETS)
stream_time_to_first_token_seconds = Histogram(
    "stream_time_to_first_token_seconds", "Time from the start of a run to its first answer token.",
    ["agent_type"], buckets=TTFT_BUCKETS)
budget_rejections_total = Counter(
    "budget_rejections_total", "Requests refused before running because a hard budget was used up.",
    ["scope"])


# Collectors computed when Prometheus scrapes (e.g. billing's budget_usage_ratio, read from the
# database); registered by the apps that own the data, exposed beside the process metrics.
scrape_registry = CollectorRegistry(auto_describe=False)
_collector_types: set[type] = set()


def register_collector(collector) -> None:
    """Expose `collector` on /metrics; one per type, so a second ready() does not duplicate it."""
    if type(collector) not in _collector_types:
        _collector_types.add(type(collector))
        scrape_registry.register(collector)


def enabled() -> bool:
    return settings.RELAY_METRICS_ENABLED


# --- bounded labels -----------------------------------------------------------------------------

# What an app knows (agents, their tools, the models it prices or serves) is registered by that
# app in its AppConfig.ready, so this module imports no app. kind -> callables returning names.
_label_sources: dict[str, list] = {"agent_type": [], "tool_name": [], "model": []}


def register_label_values(kind: str, source) -> None:
    """Add `source()` (an iterable of names) to the allowed values of label `kind`.

    "agent_type" is read per run (keep it a cheap in-memory call), "tool_name" once per process,
    "model" at most once a minute from a thread (it may use the sync ORM).
    """
    if source not in _label_sources[kind]:
        _label_sources[kind].append(source)
    tool_names.cache_clear()


def _names(kind: str) -> frozenset[str]:
    sources = _label_sources[kind]
    if len(sources) == 1:
        return frozenset(sources[0]())
    return frozenset(name for source in sources for name in source())


class _KnownModels:
    """Model names Relay prices or serves, refreshed at most once a minute (never per request)."""

    TTL = 60.0

    def __init__(self):
        self.names: frozenset[str] = frozenset()
        self.loaded_at = float("-inf")
        self.lock = threading.Lock()

    def stale(self) -> bool:
        return time.monotonic() - self.loaded_at > self.TTL

    def refresh(self) -> frozenset[str]:
        """Load the set (sync ORM: call from a thread, e.g. through relay.eventloop.db.run_db)."""
        names = _names("model")
        with self.lock:
            self.names, self.loaded_at = names, time.monotonic()
        return self.names


known_models = _KnownModels()


def model_label(name: str) -> str:
    return name if name in known_models.names else OTHER


async def refresh_known_models_if_stale() -> None:
    if known_models.stale():
        from relay.eventloop.db import run_db

        await run_db(known_models.refresh)


def agent_names() -> frozenset[str]:
    return _names("agent_type")


@functools.cache
def tool_names() -> frozenset[str]:
    """Tools come from the registered agents' code, which does not change while a process runs."""
    return _names("tool_name")


def _bounded(value: str, allowed) -> str:
    return value if value in allowed else OTHER


# --- recording ----------------------------------------------------------------------------------

def record_http(method: str, endpoint: str, status: int, seconds: float) -> None:
    method = method if method in HTTP_METHODS else OTHER
    http_requests_total.labels(method, endpoint, str(status)).inc()
    http_request_duration_seconds.labels(method, endpoint).observe(seconds)


def record_run(*, agent: str, model: str, status: str, input_tokens: int, output_tokens: int, cost,
               quality: float | None, ttft_ms: int | None) -> None:
    """One finished run: outcome, tokens and cost as billed, quality of a complete answer, TTFT."""
    if not enabled():
        return
    agent = _bounded(agent, agent_names())
    model = model_label(model)
    agent_requests_total.labels(agent, _bounded(status, RUN_STATUSES)).inc()
    token_usage_total.labels(model, "input").inc(input_tokens)
    token_usage_total.labels(model, "output").inc(output_tokens)
    api_cost_dollars_total.labels(model, agent).inc(float(cost))
    if quality is not None:
        agent_quality_score.labels(agent).observe(quality)
    if ttft_ms is not None:
        stream_time_to_first_token_seconds.labels(agent).observe(ttft_ms / 1000)


def record_refusal(*, agent: str, reason: str, scope: str | None = None) -> None:
    """A request refused before it ran: reason is one of REFUSALS; scope for budget refusals."""
    if not enabled():
        return
    agent_requests_total.labels(_bounded(agent, agent_names()), _bounded(reason, REFUSALS)).inc()
    if scope is not None:
        budget_rejections_total.labels(_bounded(scope, BUDGET_SCOPES)).inc()


def record_tool_call(tool: str, ok: bool, seconds: float) -> None:
    if not enabled():
        return
    tool = _bounded(tool, tool_names())
    tool_calls_total.labels(tool, "done" if ok else "error").inc()
    tool_duration_seconds.labels(tool).observe(seconds)


def session_started() -> bool:
    """An SSE stream or WebSocket opened; returns whether it was counted (pass to session_ended)."""
    if not enabled():
        return False
    active_sessions.inc()
    return True


def session_ended(counted: bool) -> None:
    if counted:
        active_sessions.dec()


class session_open:
    """`with session_open():` counts an open SSE stream in active_sessions while the block runs."""

    def __enter__(self):
        self.counted = session_started()
        return self

    def __exit__(self, *exc):
        session_ended(self.counted)
        return False


# --- zero series --------------------------------------------------------------------------------

_initialized = threading.Event()


def initialize_series() -> None:
    """Create every known label combination at zero, once per process.

    Prometheus cannot tell "nothing happened" from "never measured": a rate over a series that
    does not exist yet is no data, so dashboards show gaps and ratio alerts cannot evaluate.
    Known label sets are small (agents x statuses, tools, scopes, priced models).
    """
    if _initialized.is_set() or not enabled():
        return
    agents = agent_names()
    for agent in agents:
        for status in RUN_STATUSES + REFUSALS:
            agent_requests_total.labels(agent, status)
        agent_quality_score.labels(agent)
        stream_time_to_first_token_seconds.labels(agent)
    for tool in sorted(tool_names()):
        for status in TOOL_STATUSES:
            tool_calls_total.labels(tool, status)
        tool_duration_seconds.labels(tool)
    for scope in BUDGET_SCOPES:
        budget_rejections_total.labels(scope)
    for model in known_models.names:
        for kind in ("input", "output"):
            token_usage_total.labels(model, kind)
        for agent in agents:
            api_cost_dollars_total.labels(model, agent)
    _initialized.set()

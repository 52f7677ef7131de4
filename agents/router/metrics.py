"""Per-deployment metrics (docs/design.md section 8, the "(extra)" rows).

deployment_requests_total, deployment_in_flight (this process's leases: summed over workers and
instances it is the cluster's), deployment_time_to_first_token_seconds and model_fallbacks_total
are recorded where they happen; deployment_cooldown is read from the shared routing state when
Prometheus scrapes (every instance reports the same cluster-wide value: aggregate it with max).

Labels are bounded by configuration: the model and deployment names come from the catalog's
objects (agents.providers.catalog), never from a request; fallback names pass
relay.observability.metrics.model_label, reasons a fixed set.
"""

from __future__ import annotations

import logging
import threading

from django.db import DatabaseError
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from relay.observability import metrics
from relay.observability.metrics import OTHER, TTFT_BUCKETS

logger = logging.getLogger(__name__)

OUTCOMES = ("success", "failure", "neutral")
# Why the call loop moved to a fallback model: every deployment failed or was unavailable, or the
# upstream said the context was too long (the model's context-window fallback).
FALLBACK_REASONS = ("unavailable", "context_window")

deployment_requests_total = Counter(
    "deployment_requests_total", "Attempts sent to each deployment of a model, by outcome.",
    ["model", "deployment", "outcome"])
deployment_in_flight = Gauge(
    "deployment_in_flight", "Requests in flight to each deployment (summed over live workers).",
    ["model", "deployment"], multiprocess_mode="livesum")
deployment_time_to_first_token_seconds = Histogram(
    "deployment_time_to_first_token_seconds", "Time from sending an attempt to a deployment to its first event.",
    ["model", "deployment"], buckets=TTFT_BUCKETS)
model_fallbacks_total = Counter(
    "model_fallbacks_total", "Requests moved from a model to one of its fallbacks, by reason.",
    ["model", "fallback", "reason"])

# The labels a lease's in-flight increment used, so its decrement uses the same ones.
_in_flight: dict[str, tuple[str, str]] = {}
_in_flight_lock = threading.Lock()


def acquired(lease: str, model: str, deployment: str) -> None:
    if not metrics.enabled():
        return
    labels = (model, deployment)
    with _in_flight_lock:
        _in_flight[lease] = labels
    deployment_in_flight.labels(*labels).inc()


def released(lease: str, model: str, deployment: str, outcome: str, ttft: float | None) -> None:
    if not metrics.enabled():
        return
    with _in_flight_lock:
        labels = _in_flight.pop(lease, None)
    if labels is not None:
        deployment_in_flight.labels(*labels).dec()
    deployment_requests_total.labels(model, deployment, outcome if outcome in OUTCOMES else OTHER).inc()
    if ttft is not None:
        deployment_time_to_first_token_seconds.labels(model, deployment).observe(ttft)


def record_fallback(model: str, fallback: str, reason: str) -> None:
    """A request moved from `model` to `fallback` (reason: one of FALLBACK_REASONS)."""
    if not metrics.enabled():
        return
    model_fallbacks_total.labels(metrics.model_label(model), metrics.model_label(fallback),
                                 reason if reason in FALLBACK_REASONS else OTHER).inc()


def _zero_series(model) -> None:
    """Every deployment's series at zero, so rates and panels have data before the first attempt."""
    for deployment in model.deployments:
        for outcome in OUTCOMES:
            deployment_requests_total.labels(model.name, deployment.name, outcome)
        deployment_in_flight.labels(model.name, deployment.name)
        deployment_time_to_first_token_seconds.labels(model.name, deployment.name)
    for fallback in (*getattr(model, "fallbacks", ()), getattr(model, "context_window_fallback", "")):
        if fallback:
            for reason in FALLBACK_REASONS:
                model_fallbacks_total.labels(model.name, metrics.model_label(fallback), reason)


class DeploymentCooldownCollector:
    """deployment_cooldown{model, deployment}: 1 while the breaker is open or half-open.

    Read at scrape time in one round trip for every deployment of the catalog; when the catalog
    or the shared state cannot be read the family is empty (the rest of the scrape still works).
    """

    def collect(self):
        from agents.providers.catalog import available_models
        from agents.router import clock
        from agents.router.state import get_state
        from agents.router.state_base import StateUnavailable

        family = GaugeMetricFamily(
            "deployment_cooldown", "1 while a deployment's circuit breaker is open or half-open (cluster-wide).",
            labels=["model", "deployment"])
        try:
            models = [model for model in available_models() if getattr(model, "deployments", ())]
        except DatabaseError:
            logger.warning("metrics: cannot read the model catalog", exc_info=True)
            yield family
            return
        pairs = [(model, deployment) for model in models for deployment in model.deployments]
        try:
            rows = get_state().snapshot([deployment.key for _, deployment in pairs], clock())
        except StateUnavailable:
            logger.warning("metrics: cannot read the routing state", exc_info=True)
            rows = []
        for (model, deployment), row in zip(pairs, rows, strict=False):
            family.add_metric([model.name, deployment.name], 0.0 if row["state"] == "closed" else 1.0)
        if metrics.enabled():
            for model in models:
                _zero_series(model)
        yield family


def register() -> None:
    metrics.register_collector(DeploymentCooldownCollector())

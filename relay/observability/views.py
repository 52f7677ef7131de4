"""GET /metrics: Prometheus exposition text for scrapers and platform operators.

The text is platform-wide (every organization's budget ratios, the whole platform's cost), so
it is for operators only. A scraper sends `Authorization: Bearer $RELAY_METRICS_TOKEN` (compared
in constant time); any other caller goes through Relay's normal authentication and must be
platform staff (a superuser, or staff outside every organization). Organization users, even
with view_metrics, read their own figures through the cost API and the usage page: they get
403. Anonymous gets 401, a wrong token 401 (it is then tried as a JWT and refused) — all as the
error envelope.
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from relay.api.async_views import api_endpoint
from relay.eventloop.db import run_db
from relay.observability import metrics, multiproc

logger = logging.getLogger(__name__)


def scraper_token_matches(request) -> bool:
    expected = settings.RELAY_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if not expected or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected.encode())


def exposition() -> bytes:
    """The text for this instance (all its workers); sync: reads files and the database.

    The database parts (known models, budgets) are optional: when the database is down the
    scrape must still work, since that is when operators need the other metrics most.
    """
    if metrics.known_models.stale():
        try:
            metrics.known_models.refresh()
        except DatabaseError:
            logger.warning("metrics: cannot load the model names; unknown models stay 'other'", exc_info=True)
    metrics.initialize_series()
    return generate_latest(multiproc.collection_registry()) + generate_latest(metrics.scrape_registry)


async def _respond():
    return HttpResponse(await run_db(exposition), content_type=CONTENT_TYPE_PLAIN_0_0_4)  # what Prometheus 2.x parses


def metrics_view_requiring(requirement):
    """The /metrics view; who counts as an operator is accounts' rule (PLATFORM_STAFF), which
    relay/urls.py passes in so that relay/ imports no app."""

    @api_endpoint(requirement, methods=("GET",), throttle=False)
    async def _for_operator(request, drf_request):
        return await _respond()

    async def metrics_view(request):
        if request.method == "GET" and scraper_token_matches(request):
            return await _respond()
        return await _for_operator(request)

    metrics_view.required_permission = _for_operator.required_permission
    metrics_view.csrf_exempt = True
    return metrics_view

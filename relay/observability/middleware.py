"""HTTP metrics, async-native so that they add no thread hop to the async hot path.

django-prometheus's middlewares are `MiddlewareMixin` classes: under ASGI each of their hooks
runs through `sync_to_async(thread_sensitive=True)`, i.e. on the one shared sync thread of the
process (docs/design.md section 11). Their hooks only touch in-memory metrics, so these wrappers
call them inline instead, in both sync (WSGI) and async (ASGI) mode.

`MetricsMiddleware` (outermost) records http_requests_total and http_request_duration_seconds of
docs/design.md section 8, labelled by route pattern, and django-prometheus's "before" metrics.
`ViewMetricsMiddleware` (innermost) records django-prometheus's per-view metrics.
"""

from __future__ import annotations

import time

from django.urls import Resolver404, resolve
from django_prometheus import middleware as dp

from relay.eventloop.middleware import DualModeMiddleware
from relay.observability import metrics

UNMATCHED = "unmatched"


def endpoint_label(request) -> str:
    """The route pattern that served the request ("/api/v1/conversations/<uuid:pk>/"), never the path.

    Responses produced before URL resolution (413, redirects, static files) are resolved here;
    a path no route matches is "unmatched", so invented URLs cannot create series.
    """
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return UNMATCHED
    return "/" + match.route if match.route else UNMATCHED


class _Measured(DualModeMiddleware):
    """Calls before(request) -> state and after(request, response, state) around the chain, when metrics are on."""

    def handle(self, request):
        if not metrics.enabled():
            return self.get_response(request)
        state = self.before(request)
        return self.after(request, self.get_response(request), state)

    async def __acall__(self, request):
        if not metrics.enabled():
            return await self.get_response(request)
        state = self.before(request)
        return self.after(request, await self.get_response(request), state)


class MetricsMiddleware(_Measured):
    def __init__(self, get_response):
        super().__init__(get_response)
        self.django_before = dp.PrometheusBeforeMiddleware(get_response)

    def before(self, request):
        self.django_before.process_request(request)
        return time.perf_counter()

    def after(self, request, response, started):
        metrics.record_http(request.method, endpoint_label(request), response.status_code,
                            time.perf_counter() - started)
        return self.django_before.process_response(request, response)


class ViewMetricsMiddleware(_Measured):
    """django-prometheus's per-view metrics; the view counter is taken from the resolver match
    at response time instead of a process_view hook (which Django would call through a thread)."""

    def __init__(self, get_response):
        super().__init__(get_response)
        self.django_after = dp.PrometheusAfterMiddleware(get_response)

    def before(self, request):
        self.django_after.process_request(request)

    def after(self, request, response, _state):
        if getattr(request, "resolver_match", None) is not None:
            self.django_after.process_view(request, None)
        return self.django_after.process_response(request, response)

    def process_exception(self, request, exception):
        if metrics.enabled():
            self.django_after.process_exception(request, exception)


"""Async API views with the same authentication, permission, throttling and errors as DRF views.

The model-call endpoints stream and must stay async end to end (docs/design.md section 11); DRF's
APIView is sync. `api_endpoint` gives a plain async Django view the DRF request handling:
authenticators (API key, JWT, session with CSRF), the view's `required_permission`, the key's
rate limit, and every failure as the error envelope (and through the audit listener).
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings

from relay.api.errors import PayloadTooLarge, exception_handler
from relay.api.parsers import parse_json_body
from relay.eventloop.db import db

_admission = []  # [admit(drf_request, requirement, throttle)], set by AccountsConfig.ready


def register_admission(admit) -> None:
    """The one admission step (authenticate, authorize, throttle); accounts owns the rule, so it
    registers it here and this module imports no app."""
    _admission[:] = [admit]


def _authenticate(django_request, requirement, throttle: bool):
    """Admit an HTTP request through the registered admission step; the DRF request."""
    if not _admission:
        raise ImproperlyConfigured("no admission step registered (accounts must be installed)")
    request = Request(django_request, authenticators=[cls() for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES])
    _admission[0](request, requirement, throttle)
    return request


def error_response(exc, drf_request) -> JsonResponse:
    response = exception_handler(exc, {"request": drf_request, "view": None})
    if response is None:
        raise exc
    json_response = JsonResponse(response.data, status=response.status_code)
    for header in ("Retry-After", "WWW-Authenticate"):
        if response.has_header(header):
            json_response[header] = response[header]
    if response.status_code == 401:
        json_response["WWW-Authenticate"] = 'Bearer realm="relay"'
    return json_response


def read_json(django_request) -> dict:
    """The JSON object body, with the size limit and clear 400s."""
    if django_request.content_type != "application/json":
        raise exceptions.UnsupportedMediaType(django_request.content_type or "(none)")
    body = django_request.body
    if len(body) > settings.RELAY_MAX_BODY_BYTES:
        raise PayloadTooLarge()
    data = parse_json_body(body or b"null", django_request.encoding)
    if not isinstance(data, dict):
        raise exceptions.ValidationError({"non_field_errors": ["Expected a JSON object."]})
    return data


def _schema_class(view, required_permission, methods, schema: dict):
    """An APIView twin that only describes the endpoint, so drf-spectacular documents it."""
    from drf_spectacular.utils import extend_schema
    from rest_framework.views import APIView

    def describe(self, request, *args, **kwargs):  # pragma: no cover - never called
        raise NotImplementedError

    handlers = {method.lower(): extend_schema(description=view.__doc__, **schema)(describe) for method in methods}
    name = "".join(part.title() for part in view.__name__.split("_"))
    return type(f"{name}Endpoint", (APIView,), {"required_permission": required_permission,
                                                                 **handlers})


def api_endpoint(required_permission, *, methods=("POST",), throttle=True, error_adapter=None, schema=None):
    """Decorate `async def view(request, drf_request, ...)`; errors become envelopes.

    error_adapter reshapes the envelope response (the OpenAI-compatible API uses OpenAI's format);
    schema holds drf-spectacular `extend_schema` arguments for the OpenAPI document.
    """

    def decorate(view):
        @csrf_exempt  # SessionAuthentication enforces CSRF for session callers itself
        @functools.wraps(view)
        async def wrapper(django_request, *args, **kwargs):
            drf_request = None
            try:
                if django_request.method not in methods:
                    raise exceptions.MethodNotAllowed(django_request.method)
                drf_request = await db(_authenticate)(
                    django_request, required_permission, throttle)
                return await view(django_request, drf_request, *args, **kwargs)
            except (exceptions.APIException, DjangoValidationError, Http404) as exc:
                response = await db(error_response)(exc, drf_request or Request(django_request))
                return error_adapter(response) if error_adapter else response

        wrapper.required_permission = required_permission
        wrapper.allowed_methods = methods
        # drf-spectacular finds API views by their `cls`; the twin carries the documentation.
        wrapper.cls = _schema_class(view, required_permission, methods, schema or {})
        wrapper.initkwargs = {}
        return wrapper

    return decorate

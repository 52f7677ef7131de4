"""One error envelope for every API error: {"error": {"code": "...", "message": "..."}}.

Validation errors also carry "fields" ({field: [messages]}) so clients can point at the input.
"""

import math

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from relay.api.envelope import envelope, error_response


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class Unprocessable(exceptions.APIException):
    """Well-formed input that Relay will not process within its limits (e.g. a document too slow to parse)."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The request cannot be processed within Relay's limits."
    default_code = "too_complex"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A service Relay depends on is unavailable; try again shortly."
    default_code = "service_unavailable"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        parts = [f"{field}: {_flatten(value)}" for field, value in detail.items()]
        return "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)  # services explain privilege refusals

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unexpected: let Django log it and answer 500

    if isinstance(exc, exceptions.Throttled):  # DRF's own throttles say "throttled"; subclasses name themselves
        code = "rate_limited" if exc.default_code == exceptions.Throttled.default_code else exc.default_code
    elif isinstance(exc, exceptions.ParseError):
        code = "malformed_request"
    else:
        code = getattr(exc, "default_code", "error")
    extra = {}
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        extra["fields"] = detail
        message = "Invalid input. " + _flatten(detail)
    else:
        message = _flatten(exc.detail)
    if getattr(exc, "wait", None) is not None:  # DRF's Throttled, and errors that name a wait (503s)
        extra["retry_after"] = max(1, math.ceil(exc.wait))
        response["Retry-After"] = str(extra["retry_after"])
    response.data = envelope(code, message, **extra)
    on_api_error(context.get("request"), response.status_code, code, message)
    return response


def on_api_error(request, status_code: int, code: str, message: str) -> None:
    """Hook for recording refusals (the audit app connects to it)."""
    for listener in _listeners:
        listener(request, status_code, code, message)


_listeners = []


def add_error_listener(listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def _wants_json(request) -> bool:
    path = request.path
    return path.startswith("/api/") or path.startswith("/v1/")


def handler400(request, exception=None):
    return error_response(400, "bad_request", "The request could not be understood.")


def handler403(request, exception=None):
    if _wants_json(request):
        return error_response(403, "permission_denied", "You do not have permission to perform this action.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def handler404(request, exception=None):
    if _wants_json(request):
        return error_response(404, "not_found", "Not found.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    import sys

    from relay.faults import fault_response, is_service_fault

    error = sys.exc_info()[1]  # Django calls this inside its except block
    if is_service_fault(error):  # Redis/database down, raised outside a view (e.g. sessions)
        return fault_response(error)
    if _wants_json(request):
        return error_response(500, "server_error", "Relay hit an internal error; it has been logged.")
    from django.views.defaults import server_error

    return server_error(request)

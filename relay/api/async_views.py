"""Async API views with the same authentication, permission, throttling and errors as DRF views.

The model-call endpoints stream and must stay async end to end (docs/design.md section 11); DRF's
APIView is sync. `api_endpoint` gives a plain async Django view the DRF request handling:
authenticators (API key, JWT, session with CSRF), the view's `required_permission`, the key's
rate limit, the body parsed by the view's DRF parsers, and every failure as the error envelope
(and through the audit listener).

The body is parsed once, by the same parsers, whatever the credential: a session's CSRF check
reads the form fields (and so parses the body) while authenticating, an API key or a JWT
parses it right after admission, in the same trip to the DB threads. A DRF Request built
without parsers answered every session POST with 415.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.settings import api_settings

from relay import versioned_cache
from relay.api.errors import exception_handler
from relay.api.parsers import BoundedJSONParser
from relay.eventloop.db import db
from relay.eventloop.middleware import UPLOAD_SIZED

JSON = (BoundedJSONParser,)
MULTIPART = (MultiPartParser,)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_REFUSALS = (exceptions.APIException, DjangoValidationError, Http404)

_admission = []  # [admit(drf_request, requirement, throttle)], set by AccountsConfig.ready
_admission_on_loop = []  # [async admit(django_request, requirement, throttle) -> (admitted, tokens) | None]
# A body parsed on the loop is at most this long; a longer one is parsed on a DB thread, where it
# holds up no other request.
_LOOP_BODY_BYTES = 64 * 1024


def register_admission(admit, on_loop=None) -> None:
    """The one admission step (authenticate, authorize, throttle); accounts owns the rule, so it
    registers it here and this module imports no app. `on_loop`, the same step for the requests it
    can decide on the event loop alone (None: it cannot, go to a DB thread)."""
    _admission[:] = [admit]
    _admission_on_loop[:] = [on_loop] if on_loop is not None else []


def _authenticate(django_request, requirement, throttle: bool, parsers, max_body_bytes: int):
    """Admit an HTTP request through the registered admission step; the DRF request, its body parsed."""
    if not _admission:
        raise ImproperlyConfigured("no admission step registered (accounts must be installed)")
    request = _drf_request(django_request, parsers, max_body_bytes,
                           [cls() for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES])
    _admission[0](request, requirement, throttle)
    if django_request.method in _BODY_METHODS:
        request.data  # noqa: B018 - parsed here, after admission, for callers whose CSRF check did not
    return request


def _drf_request(django_request, parsers, max_body_bytes: int, authenticators: list) -> Request:
    return Request(django_request, parsers=[cls() for cls in parsers], authenticators=authenticators,
                   negotiator=api_settings.DEFAULT_CONTENT_NEGOTIATION_CLASS(),
                   parser_context={"max_body_bytes": max_body_bytes})


def _admit(django_request, requirement, throttle: bool, parsers, max_body_bytes: int, prelude):
    """One trip to the DB threads: admission, then the view's prelude (its sync reads) on the same
    thread, the version tokens of the per-process copies read along with the API key
    (relay.versioned_cache.one_read). Returns (DRF request, what the prelude gave, its refusal)."""
    with versioned_cache.one_read():
        return _with_prelude(prelude, django_request,
                             _authenticate(django_request, requirement, throttle, parsers, max_body_bytes))


def _with_prelude(prelude, django_request, request):
    if prelude is None:
        return request, None, None
    try:
        return request, prelude(django_request, request), None
    except _REFUSALS as refusal:  # answered with the admitted request: its caller is known
        return request, None, refusal


async def _admit_on_loop(django_request, requirement, throttle: bool, parsers, max_body_bytes: int, prelude):
    """_admit without the trip for admission when the registered loop step decides it (an API key
    whose copy is cached): the body parsed on the loop, then the prelude, with the version tokens the
    step read, on the loop too for a JSON body (RELAY_PRELUDE_ON_LOOP) unless it must read the
    database: Django refuses a query on the loop (SynchronousOnlyOperation) before sending it, and
    the prelude, which only reads, runs again, whole, on a DB thread. None when the step cannot
    decide: _admit then does it all."""
    if not (_admission_on_loop and settings.RELAY_ADMIT_ON_LOOP) or _content_length(django_request) > _LOOP_BODY_BYTES:
        return None
    decided = await _admission_on_loop[0](django_request, requirement, throttle)
    if decided is None:
        return None
    admitted, tokens = decided
    request = _drf_request(django_request, parsers, max_body_bytes, [admitted.authenticator])
    # As DRF's own authentication leaves the request (request.user, .auth, successful_authenticator).
    request._authenticator, request.user, request.auth = admitted.authenticator, admitted.user, admitted.api_key
    if django_request.method in _BODY_METHODS:
        request.data  # noqa: B018 - parsed here (a ParseError is the caller's refusal)
    if prelude is None:
        return request, None, None
    # A JSON body is parsed whole; a multipart body's files are read as the prelude goes, so a
    # prelude redone on a thread would find them read: those run on a thread from the start.
    if settings.RELAY_PRELUDE_ON_LOOP and parsers == JSON:
        try:
            return _prelude_with(tokens, prelude, django_request, request)
        except SynchronousOnlyOperation:
            pass  # it reads the database: all of it again on a DB thread
    return await db(_prelude_with)(tokens, prelude, django_request, request)


def _content_length(django_request) -> int:
    if django_request.method not in _BODY_METHODS:
        return 0
    try:  # the ASGI handler sets it for a chunked body too (the length it read); unknown: not on the loop
        return int(django_request.META["CONTENT_LENGTH"])
    except (KeyError, ValueError):
        return _LOOP_BODY_BYTES + 1


def _prelude_with(tokens: dict, prelude, django_request, request):
    """The prelude on a DB thread, its copies read under the tokens the loop's admission read."""
    with versioned_cache.one_read(tokens):
        return _with_prelude(prelude, django_request, request)


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


def read_json(drf_request) -> dict:
    """The JSON object body (parsed at admission by BoundedJSONParser: size limit, clear 400s)."""
    content_type = drf_request._request.content_type
    if content_type != "application/json":
        raise exceptions.UnsupportedMediaType(content_type or "(none)")
    data = drf_request.data
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


def api_endpoint(required_permission, *, methods=("POST",), throttle=True, error_adapter=None, schema=None,
                 parsers=JSON, upload_sized=False, prelude=None):
    """Decorate `async def view(request, drf_request, ...)`; errors become envelopes.

    prelude(request, drf_request), sync and read-only, runs right after admission, where the request
    was admitted (the event loop, or a DB thread; it may start on the loop and run again on a
    thread, _admit_on_loop); the view gets what it returns as its third argument (`view(request,
    drf_request, ready, ...)`): a view whose first step reads the database saves a trip.

    error_adapter reshapes the envelope response (the OpenAI-compatible API uses OpenAI's format);
    schema holds drf-spectacular `extend_schema` arguments for the OpenAPI document. parsers are
    the DRF parsers of the body (JSON unless said). upload_sized lets a JSON body be as large as
    RELAY_MAX_UPLOAD_BYTES instead of RELAY_MAX_BODY_BYTES (requests that carry images inline):
    the size limit middleware, the ASGI handler and the parser read it from the view, and the view
    must bound what it does with such a body itself.
    """

    def max_body_bytes() -> int:
        return settings.RELAY_MAX_UPLOAD_BYTES if upload_sized else settings.RELAY_MAX_BODY_BYTES

    def decorate(view):
        @csrf_exempt  # SessionAuthentication enforces CSRF for session callers itself
        @functools.wraps(view)
        async def wrapper(django_request, *args, **kwargs):
            drf_request = None
            try:
                if django_request.method not in methods:
                    raise exceptions.MethodNotAllowed(django_request.method)
                arguments = (django_request, required_permission, throttle, parsers, max_body_bytes(), prelude)
                admitted = await _admit_on_loop(*arguments)
                drf_request, ready, refusal = admitted if admitted is not None else await db(_admit)(*arguments)
                if refusal is not None:
                    raise refusal
                if prelude is not None:
                    return await view(django_request, drf_request, ready, *args, **kwargs)
                return await view(django_request, drf_request, *args, **kwargs)
            except _REFUSALS as exc:
                response = await db(error_response)(exc, drf_request or Request(django_request))
                return error_adapter(response) if error_adapter else response

        wrapper.required_permission = required_permission
        wrapper.allowed_methods = methods
        if upload_sized:
            wrapper.body_limit_setting = UPLOAD_SIZED
        # drf-spectacular finds API views by their `cls`; the twin carries the documentation.
        wrapper.cls = _schema_class(view, required_permission, methods, schema or {})
        wrapper.initkwargs = {}
        return wrapper

    return decorate

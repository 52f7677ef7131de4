"""Who is acting, from where, under which request id: one ContextVar per request, task or socket.

The middleware binds a context for every HTTP request, `audit.asgi.AuditScopeMiddleware` for
every WebSocket connection, and the Celery handlers in `audit.celery_context` carry it from the
request that queued a task into the worker that runs it. `audit.services.record()` fills every
field it is not given from here.

The context object is mutable on purpose: DRF authenticates inside the view (possibly in a
sync_to_async thread that runs on a copy of the ContextVars), and updating the one object
the request bound makes the actor visible to everything else the request does.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace

from relay.http import client_ip

_MAX_REQUEST_ID_HEADER = 64
_MAX_USER_AGENT = 512

# Fields that travel in Celery headers; `request` and the flags stay in-process.
_PORTABLE = ("request_id", "actor_id", "actor_name", "api_key_prefix", "organization_id", "ip", "user_agent")


@dataclass
class AuditContext:
    request_id: str = ""
    actor_id: int | None = None
    actor_name: str = ""
    api_key_prefix: str = ""
    organization_id: int | None = None
    ip: str | None = None
    user_agent: str = ""
    # The Django request, so an actor authenticated later (DRF, session) is found at record time.
    request: object | None = field(default=None, repr=False, compare=False)
    # Set once a denial is recorded, so one denied response never yields two events.
    denial_recorded: bool = field(default=False, compare=False)

    def to_headers(self) -> dict:
        resolve_actor(self)
        return {name: getattr(self, name) for name in _PORTABLE}

    @classmethod
    def from_headers(cls, data: dict) -> AuditContext:
        known = {f.name for f in fields(cls)} & set(_PORTABLE)
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


_current: ContextVar[AuditContext | None] = ContextVar("relay_audit_context", default=None)


def current() -> AuditContext:
    """The bound context, or an empty one (management commands, shells, tests without requests)."""
    return _current.get() or AuditContext()


def is_bound() -> bool:
    return _current.get() is not None


@contextmanager
def bind(context: AuditContext | None = None, **overrides):
    """Run a block under `context` (default: a copy of the current one) with `overrides` applied."""
    base = context if context is not None else replace(current())
    bound = replace(base, **overrides) if overrides else base
    token = _current.set(bound)
    try:
        yield bound
    finally:
        _current.reset(token)


def activate(context: AuditContext):
    """Bind without a block; returns the token for `deactivate` (middleware and signal handlers)."""
    return _current.set(context)


def deactivate(token) -> None:
    _current.reset(token)


def set_actor(user, key=None) -> None:
    """Record who the request turned out to be (called from the authentication step)."""
    context = _current.get()
    if context is None or user is None or not getattr(user, "is_authenticated", False):
        return
    context.actor_id = user.pk
    context.actor_name = user.get_username()
    context.organization_id = getattr(user, "organization_id", None)
    context.api_key_prefix = getattr(key, "prefix", "") or ""


def resolve_actor(context: AuditContext) -> AuditContext:
    """Fill the actor from the bound request once something has authenticated it."""
    request = context.request
    if context.actor_id is None and request is not None:
        user = getattr(request, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            context.actor_id = user.pk
            context.actor_name = user.get_username()
            context.organization_id = getattr(user, "organization_id", None)
            context.api_key_prefix = getattr(getattr(request, "auth", None), "prefix", "") or ""
    return context


def new_request_id() -> str:
    return str(uuid.uuid4())


def parse_request_id(value: str | None) -> str | None:
    """A client's X-Request-ID in canonical form if it is a UUID, else None (never echo raw input)."""
    if not value or len(value) > _MAX_REQUEST_ID_HEADER:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        return None


def from_request(request) -> AuditContext:
    meta = request.META
    return AuditContext(
        request_id=parse_request_id(meta.get("HTTP_X_REQUEST_ID")) or new_request_id(),
        ip=client_ip(meta),
        user_agent=meta.get("HTTP_USER_AGENT", "")[:_MAX_USER_AGENT],
        request=request,
    )


def from_scope(scope: dict) -> AuditContext:
    """The context of a WebSocket connection (ASGI scope), with the same trust rules as HTTP."""
    headers = {}
    for name, value in scope.get("headers", []):
        headers["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode("latin-1")
    client = scope.get("client") or (None, None)
    meta = {**headers, "REMOTE_ADDR": client[0] or ""}
    context = AuditContext(
        request_id=parse_request_id(meta.get("HTTP_X_REQUEST_ID")) or new_request_id(),
        ip=client_ip(meta),
        user_agent=meta.get("HTTP_USER_AGENT", "")[:_MAX_USER_AGENT],
    )
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        context.actor_id, context.actor_name = user.pk, user.get_username()
        context.organization_id = getattr(user, "organization_id", None)
    return context

"""One door: every query is admitted against the credential's current state.

HTTP requests and WebSocket queries present credentials in different ways (an Authorization
header, a session cookie, a token in a socket's first frame), but each query passes the same
step, `admit`: authenticate against the current state (a revoked or expired key, a deactivated
owner and a lowered role are seen at once: the key cache is shared and dropped on every change),
authorize, then count the key's requests/minute. A WebSocket keeps its credential, not the user
it found at connect time, and is admitted again before every query, so a change made through any
instance binds the next query on every transport.

Refusals are raised as DRF exceptions; each transport turns them into its answer (an error
envelope, or an error event and a close code) and records 401/403 through
`audit.signals.record_refusal`, once per refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions
from rest_framework.settings import api_settings

from accounts.authentication import APIKeyAuthentication, bearer_token
from accounts.permissions import ADMIN, AUTHENTICATED, holds, request_key
from accounts.services import KEY_PREFIX, KeyRejected, admitted_cached_key, key_cache_key, parse_key
from accounts.throttling import APIKeyRateThrottle, count_request_on_loop, limits_of, wait_seconds
from audit import context as audit_context
from relay import versioned_cache
from relay.eventloop.caches import ManyRead, get_many_on_loop, read_many_on_loop
from relay.http import client_ip


@dataclass(frozen=True)
class HTTPCredential:
    """Whatever an HTTP request carries, read by DRF's authenticators (API key, JWT, session + CSRF)."""

    request: object  # a rest_framework Request

    def authenticate(self):
        return self.request.user, request_key(self.request)

    def throttle_subject(self, user, key):
        return self.request


@dataclass(frozen=True)
class TokenCredential:
    """An API key or a JWT access token, as a program sends it in a WebSocket's auth frame."""

    token: str = field(repr=False)
    client_ip: str | None = None

    def authenticate(self):
        from accounts.services import KEY_PREFIX, KeyRejected, authenticate_key

        if self.token.startswith(KEY_PREFIX):
            try:
                key = authenticate_key(self.token, client_ip=self.client_ip)
            except KeyRejected as rejected:
                raise exceptions.AuthenticationFailed(rejected.reason) from None
            return key.owner, key
        from rest_framework_simplejwt.authentication import JWTAuthentication
        from rest_framework_simplejwt.exceptions import InvalidToken, TokenError

        jwt = JWTAuthentication()
        try:
            return jwt.get_user(jwt.get_validated_token(self.token)), None  # get_user refuses inactive users
        except (InvalidToken, TokenError) as error:
            raise exceptions.AuthenticationFailed(str(error)) from None

    def throttle_subject(self, user, key):
        return _subject(user, key, self.client_ip)


@dataclass(frozen=True)
class SessionCredential:
    """A browser's session, by its key: read again from the session store for every query."""

    session_key: str = field(repr=False)
    client_ip: str | None = None

    def authenticate(self):
        from django.contrib.auth import get_user

        store = import_module(settings.SESSION_ENGINE).SessionStore(self.session_key)
        # get_user checks the session's auth hash (a changed password ends it) and refuses inactive users.
        user = get_user(SimpleNamespace(session=store))
        if not user.is_authenticated:
            raise exceptions.AuthenticationFailed("The session has ended; sign in again.")
        return user, None

    def throttle_subject(self, user, key):
        return _subject(user, key, self.client_ip)


def _subject(user, key, client_ip):
    """What DRF's throttles read of a request, for a query that did not come as one (a WebSocket frame)."""
    return SimpleNamespace(user=user, auth=key, _request=SimpleNamespace(), META={"REMOTE_ADDR": client_ip or ""})


@dataclass
class Admitted:
    user: object
    api_key: object | None
    remaining_requests: int | None = None  # the key's requests left this minute (X-RateLimit-Remaining-Requests)
    authenticator: object = None  # the DRF authenticator the credential stands for (admit_on_loop)


def admit(credential, requirement=AUTHENTICATED, *, throttle: bool = True) -> Admitted:
    """Authenticate now, authorize, count the request; raises AuthenticationFailed, PermissionDenied, Throttled.

    Sync (ORM and cache): async callers run it with relay.eventloop.db.db.
    """
    user, key = credential.authenticate()
    if requirement is not None:
        if not user or not user.is_authenticated:
            raise exceptions.NotAuthenticated()
        if not holds(user, key, requirement):
            raise exceptions.PermissionDenied()
    audit_context.set_actor(user, key)
    remaining = None
    if throttle:
        subject = credential.throttle_subject(user, key)
        for throttle_class in api_settings.DEFAULT_THROTTLE_CLASSES:
            limiter = throttle_class()
            if not limiter.allow_request(subject, None):
                raise exceptions.Throttled(wait=limiter.wait())
        remaining = getattr(subject._request, "rate_limit_remaining_requests", None)
    return Admitted(user, key, remaining)


async def admit_on_loop(request, requirement=AUTHENTICATED, throttle: bool = True) -> tuple[Admitted, dict] | None:
    """`admit` of an HTTP request (a Django request) made with an API key, done on the event loop
    when nothing in it needs the database: the key's copy read from the shared cache (with the
    version tokens of the per-process copies, returned for `versioned_cache.one_read`) and its rate
    limit counted by the loop's own Redis client, with no trip to a DB thread.

    None when the loop cannot decide it alone: another credential, a cache that is not Redis, a
    key not cached, any refusal of the key or of the requirement (authenticate_key and holds decide
    and record those on a DB thread, as for every request), a last use to note. Nothing has been
    counted then. A request over its rate raises Throttled, as admit does.
    """
    if not _decidable_on_loop(requirement, throttle):
        return None
    presented = _presented_key(request)
    if presented is None:
        return None
    token, prefix = presented
    along = versioned_cache.token_keys()
    keys = [key_cache_key(prefix), *along]
    ahead = request.__dict__.pop(_READ_AHEAD, None)
    try:
        found = await (ahead.result() if ahead is not None and ahead.keys == keys else get_many_on_loop(keys))
    except (RedisConnectionError, RedisTimeoutError):
        raise  # unreachable: 503 now (relay.faults), not after the DB thread's read has waited as long
    except RedisError:
        return None
    if found is None:
        return None
    key = admitted_cached_key(token, found.get(key_cache_key(prefix)), client_ip(request.META))
    if key is None:
        return None
    try:
        if requirement is not None and not holds(key.owner, key, requirement):
            return None
    except SynchronousOnlyOperation:  # a permission the cached copy does not carry: the thread reads it
        return None
    audit_context.set_actor(key.owner, key)
    remaining = None
    limits = limits_of(key) if throttle else []
    if limits:
        allowed, wait, remaining = await count_request_on_loop(limits)
        if not allowed:
            raise exceptions.Throttled(wait=wait_seconds(wait))
        request.rate_limit_remaining_requests = remaining  # billing.ratelimit's header reads it here
    admitted = Admitted(key.owner, key, remaining, authenticator=APIKeyAuthentication())
    return admitted, {name: found.get(version_key) for version_key, name in along.items()}


def _presented_key(request) -> tuple[str, str] | None:
    """(token, prefix) of the API key the request presents (None: no key, or not one at all)."""
    try:
        token = bearer_token(request)
        prefix = parse_key(token) if token and token.startswith(KEY_PREFIX) else None
    except (exceptions.AuthenticationFailed, KeyRejected):
        return None
    return None if prefix is None else (token, prefix)


_READ_AHEAD = "_relay_key_read_ahead"


def read_key_ahead(request) -> ManyRead | None:
    """Queue admit_on_loop's one read (the key's cached copy and the version tokens) now, for the
    admission to take when it comes: the round trip to Redis then runs beside the middleware and
    the URL's resolution instead of after them. The read decides nothing (the admission does, from
    it, exactly as from its own); a request refused before its admission leaves it untaken. None
    when there is nothing to read ahead: no API key, or a cache that is not Redis."""
    presented = _presented_key(request) if settings.RELAY_ADMIT_ON_LOOP and settings.REDIS_URL else None
    if presented is None:
        return None
    ahead = read_many_on_loop([key_cache_key(presented[1]), *versioned_cache.token_keys()])
    if ahead is not None:
        request.__dict__[_READ_AHEAD] = ahead
    return ahead


def _decidable_on_loop(requirement, throttle: bool) -> bool:
    """Whether the loop's step gives the DB thread's answer under these settings: an API key is the
    first credential DRF tries, the rate limit is only the key's and counted in Redis, and the
    requirement needs no query (an admin's role is read from the database: ADMIN goes to the thread)."""
    return (bool(settings.REDIS_URL) and requirement != ADMIN
            and api_settings.DEFAULT_AUTHENTICATION_CLASSES[:1] == [APIKeyAuthentication]
            and (not throttle or list(api_settings.DEFAULT_THROTTLE_CLASSES) == [APIKeyRateThrottle]))

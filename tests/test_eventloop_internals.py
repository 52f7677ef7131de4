"""The Django, asgiref and WhiteNoise behaviours relay/eventloop relies on, one test each.

relay/eventloop subclasses or bypasses parts of these libraries that are not public API. Each
test here exercises one such behaviour directly (never a version check), so an upgrade that
changes it fails here, under the name of what changed, rather than as a slow hot path or a
missing deploy warning somewhere else.
"""

import asyncio
import threading

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpResponse
from django.test import RequestFactory

from tests.support.asgi import asgi_request, body_of
from tests.support.caches import backends_of_two_requests

STATIC_PATH = "/static/css/relay.css"


async def _async_view(request):
    return HttpResponse("ok")


urlpatterns = []  # a URLconf with no views, for test_a_changed_urlconf_forgets_the_async_views_matches


# --- django.core.handlers.base.BaseHandler.resolve_request (relay/eventloop/handler.py) --------


def test_base_handler_resolves_each_request_through_the_handlers_resolve_request():
    """RelayASGIHandler.resolve_request gives Django the match the handler chose an async view by:
    the URL is resolved once per path, not twice per request."""
    from relay.eventloop.handler import RelayASGIHandler, async_view_match

    seen = []

    class Handler(RelayASGIHandler):
        def resolve_request(self, request):
            seen.append(request.path_info)
            return super().resolve_request(request)

    handler = Handler()
    handler.load_middleware(is_async=True)
    request = RequestFactory().get("/api/v1/stream")
    asyncio.run(handler.get_response_async(request))
    assert seen == ["/api/v1/stream"]
    assert request.resolver_match is async_view_match("/api/v1/stream") is not None
    page = RequestFactory().get("/healthz")  # a sync view: resolved Django's way
    assert Handler().resolve_request(page).func is page.resolver_match.func
    assert async_view_match("/healthz") is None


def test_a_changed_urlconf_forgets_the_async_views_matches(settings):
    from relay.eventloop.handler import async_view_match

    assert async_view_match("/api/v1/stream") is not None
    settings.ROOT_URLCONF = __name__
    assert async_view_match("/api/v1/stream") is None


# --- django.utils.deprecation.MiddlewareMixin (relay/eventloop/inline.py) ---------------------


def test_middleware_mixin_dispatches_async_calls_to___acall__():
    from django.utils.deprecation import MiddlewareMixin

    class Probe(MiddlewareMixin):
        async def __acall__(self, request):
            return "from __acall__"

    probe = Probe(_async_view)
    assert probe.async_mode is True  # inline.CsrfViewMiddleware reads it
    assert asyncio.run(probe(RequestFactory().get("/"))) == "from __acall__"


def test_middleware_mixin_is_sync_under_a_sync_chain():
    from django.utils.deprecation import MiddlewareMixin

    mixin = MiddlewareMixin(lambda request: HttpResponse("sync"))
    assert mixin.async_mode is False
    assert mixin(RequestFactory().get("/")).content == b"sync"


def test_base_handler_awaits_a_coroutine_marked_process_view_as_it_is():
    """inline.CsrfViewMiddleware marks its process_view a coroutine function to skip the thread hop."""
    from django.core.handlers.base import BaseHandler

    def hook(request, callback, callback_args, callback_kwargs):
        return None

    markcoroutinefunction(hook)
    assert BaseHandler().adapt_method_mode(True, hook) is hook

    def sync_hook(request, callback, callback_args, callback_kwargs):
        return None

    assert BaseHandler().adapt_method_mode(True, sync_hook) is not sync_hook  # the hop inline avoids


class _Untouchable:
    """A session that fails the test if anything reads or writes it."""

    def __getattr__(self, name):
        raise AssertionError(f"the session was touched: {name}")


def test_authentication_middleware_process_request_reads_no_session():
    from django.contrib.auth.middleware import AuthenticationMiddleware

    request = RequestFactory().get("/")
    request.session = _Untouchable()
    AuthenticationMiddleware(_async_view).process_request(request)
    assert hasattr(request, "user") and hasattr(request, "auser")  # lazy: resolved only when asked


def test_session_middleware_process_request_is_lazy_and_process_response_saves_only_a_changed_session():
    from django.contrib.sessions.middleware import SessionMiddleware

    middleware = SessionMiddleware(_async_view)
    request = RequestFactory().get("/")
    middleware.process_request(request)
    saves = []
    request.session.save = lambda *args, **kwargs: saves.append(1)
    assert not request.session.accessed and not request.session.modified
    middleware.process_response(request, HttpResponse())
    assert saves == []  # what inline.SessionMiddleware._response_needs_thread assumes
    request.session["k"] = "v"
    middleware.process_response(request, HttpResponse())
    assert saves == [1]


def test_message_middleware_stores_only_messages_read_or_added():
    from django.contrib.messages import add_message, constants
    from django.contrib.messages.middleware import MessageMiddleware

    middleware = MessageMiddleware(_async_view)
    request = RequestFactory().get("/")
    request.session = _Untouchable()
    middleware.process_request(request)
    stored = []
    request._messages._store = lambda messages, response, *a, **k: stored.append(list(messages))
    middleware.process_response(request, HttpResponse())
    assert stored == []  # neither used nor added_new: what inline.MessageMiddleware assumes
    add_message(request, constants.INFO, "hello")
    assert request._messages.added_new
    middleware.process_response(request, HttpResponse())
    assert [str(m) for m in stored[0]] == ["hello"]


def test_csrf_view_middleware_reads_its_secret_from_the_cookie_not_the_session():
    from django.middleware.csrf import CsrfViewMiddleware, _get_new_csrf_string

    assert settings.CSRF_USE_SESSIONS is False
    secret = _get_new_csrf_string()
    request = RequestFactory().post("/", HTTP_X_CSRFTOKEN=secret)
    request.COOKIES[settings.CSRF_COOKIE_NAME] = secret
    request.session = _Untouchable()
    middleware = CsrfViewMiddleware(lambda request: HttpResponse())
    middleware.process_request(request)
    assert middleware.process_view(request, _async_view, (), {}) is None  # accepted, session untouched
    refused = RequestFactory().post("/")
    refused.session = _Untouchable()
    middleware.process_request(refused)
    assert middleware.process_view(refused, _async_view, (), {}).status_code == 403


# --- ASGIHandler's thread-sensitive context (relay/eventloop/handler.py) ----------------------


def test_asgi_handler_call_runs_handle_in_a_thread_sensitive_context(monkeypatch):
    """RelayASGIHandler calls handle() itself for async views to skip this context."""
    from django.core.handlers.asgi import ASGIHandler

    seen = []

    async def handle(self, scope, receive, send):
        seen.append(SyncToAsync.thread_sensitive_context.get(None))

    monkeypatch.setattr(ASGIHandler, "handle", handle)
    asyncio.run(ASGIHandler()({"type": "http"}, None, None))
    assert isinstance(seen[0], ThreadSensitiveContext)


def test_asgiref_thread_sensitive_calls_get_a_thread_per_context_and_share_one_outside():
    def thread():
        return threading.get_ident()

    async def in_context(seen: list, both: asyncio.Event):
        async with ThreadSensitiveContext():
            ident = await sync_to_async(thread)()
            seen.append(ident)
            if len(seen) == 2:
                both.set()
            # Both contexts stay open, so both threads are alive: a finished thread's id may be reused.
            await both.wait()
            return ident

    async def calls():
        shared = {await sync_to_async(thread)() for _ in range(2)}
        seen, both = [], asyncio.Event()
        contexts = set(await asyncio.gather(in_context(seen, both), in_context(seen, both)))
        return shared, contexts

    shared, contexts = asyncio.run(calls())
    assert len(shared) == 1 and len(contexts) == 2 and not shared & contexts


@pytest.mark.django_db
def test_asgi_handler_handle_serves_a_request_outside_the_context():
    from django.core.handlers.asgi import ASGIHandler

    sent, messages = [], [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no disconnect: the handler cancels this once it has answered

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/healthz", "query_string": b"", "headers": [],
             "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
    asyncio.run(ASGIHandler().handle(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200


def test_signal_live_receivers_are_split_into_sync_and_async():
    """RelayASGIHandler sends the request signals on the loop only while they have no async receiver."""
    from django.dispatch import Signal

    signal = Signal()

    def sync_receiver(**kwargs):
        return None

    async def async_receiver(**kwargs):
        return None

    signal.connect(sync_receiver)
    assert signal._live_receivers(None) == ([sync_receiver], [])
    signal.connect(async_receiver)
    assert signal._live_receivers(None) == ([sync_receiver], [async_receiver])


def test_asgi_request_takes_content_length_from_the_scope_headers():
    """bounded_body appends the length it read to the scope's headers before Django builds the request."""
    import io

    from django.core.handlers.asgi import ASGIRequest

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]}
    request = ASGIRequest(scope, io.BytesIO(b"{}"))
    assert request.META["CONTENT_LENGTH"] == "2" and request.body == b"{}"


# --- the deploy checks' membership tests on MIDDLEWARE (relay/settings.py MiddlewareList) ----


def _deploy_check_cases():
    from django.core.checks.security import base, csrf, sessions

    cases = [
        ("security.W001", base.check_security_middleware, {}),
        ("security.W002", base.check_xframe_options_middleware, {}),
        ("security.W003", csrf.check_csrf_middleware, {}),
        ("security.W004", base.check_sts, {"SECURE_HSTS_SECONDS": 0}),
        ("security.W016", csrf.check_csrf_cookie_secure, {"CSRF_COOKIE_SECURE": False}),
        ("security.W012", sessions.check_session_cookie_secure, {"SESSION_COOKIE_SECURE": False}),
    ]
    return [pytest.param(*case, id=case[0]) for case in cases]


@pytest.mark.parametrize("check_id,check,overrides", _deploy_check_cases())
def test_deploy_checks_find_django_middleware_by_membership_in_MIDDLEWARE(check_id, check, overrides):
    """Django's deploy checks ask `"django.middleware...." in settings.MIDDLEWARE`; Relay's list
    answers yes for its inline subclasses, so each check sees the middleware it looks for."""
    from django.test import override_settings

    relay_list = settings.MIDDLEWARE
    assert type(relay_list).__name__ == "MiddlewareList"
    plain = list(relay_list)
    with override_settings(MIDDLEWARE=relay_list, **overrides):
        with_relay = {error.id for error in check(None)}
    with override_settings(MIDDLEWARE=plain, **overrides):
        with_plain = {error.id for error in check(None)}
    missing = {"security.W001", "security.W002", "security.W003"}
    if check_id in missing:  # "X is not in MIDDLEWARE": a plain list of Relay's paths would be warned
        assert check_id not in with_relay and check_id in with_plain
    else:  # settings checks that only run when the middleware is there
        assert check_id in with_relay and with_relay != with_plain


# --- WhiteNoise's internals (relay/eventloop/static.py) ---------------------------------------


def test_whitenoise_static_prefix_is_the_static_url_path():
    from whitenoise.middleware import WhiteNoiseMiddleware

    assert WhiteNoiseMiddleware(_async_view).static_prefix == settings.STATIC_URL


def test_whitenoise_files_maps_url_paths_to_static_files_without_autorefresh(settings):
    from whitenoise.middleware import WhiteNoiseMiddleware

    settings.WHITENOISE_AUTOREFRESH = False  # as in production (`make run` and a bare `make test` run with DEBUG)
    middleware = WhiteNoiseMiddleware(_async_view)
    assert middleware.autorefresh is False
    assert middleware.files.get(STATIC_PATH) is not None and middleware.files.get("/static/nope.css") is None


def test_whitenoise_find_file_finds_url_paths_with_autorefresh(settings):
    from whitenoise.middleware import WhiteNoiseMiddleware

    settings.WHITENOISE_AUTOREFRESH = True
    middleware = WhiteNoiseMiddleware(_async_view)
    assert middleware.autorefresh is True
    assert middleware.find_file(STATIC_PATH) is not None and middleware.find_file("/static/nope.css") is None


def test_whitenoise_serve_answers_a_static_file_from_a_request(settings):
    from whitenoise.middleware import WhiteNoiseMiddleware

    settings.WHITENOISE_AUTOREFRESH = False
    middleware = WhiteNoiseMiddleware(_async_view)
    response = middleware.serve(middleware.files[STATIC_PATH], RequestFactory().get(STATIC_PATH))
    assert response.status_code == 200 and b"--accent" in b"".join(response.streaming_content)


def test_whitenoise_middleware_init_takes_get_response_and_serves_in_sync_mode():
    from whitenoise.middleware import WhiteNoiseMiddleware

    middleware = WhiteNoiseMiddleware(lambda request: HttpResponse("app"))
    assert middleware(RequestFactory().get(STATIC_PATH)).status_code == 200
    assert middleware(RequestFactory().get("/other")).content == b"app"


def test_async_whitenoise_serves_static_files_and_passes_the_rest_on_the_loop():
    from relay.eventloop.static import AsyncWhiteNoiseMiddleware

    middleware = AsyncWhiteNoiseMiddleware(_async_view)
    static = asyncio.run(middleware(RequestFactory().get(STATIC_PATH)))
    other = asyncio.run(middleware(RequestFactory().get("/other")))
    assert static.status_code == 200 and other.content == b"ok"


def test_a_static_file_is_streamed_by_the_asgi_handler_without_reading_it_whole_first():
    """Control: relay.eventloop.static hands Django an async iterator. Given the file's sync one,
    Django's ASGI handler warns and reads the whole file into memory before sending a byte."""
    import warnings

    expected = (settings.BASE_DIR / "static" / STATIC_PATH.removeprefix("/static/")).read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sent = asyncio.run(asgi_request("GET", STATIC_PATH))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert body_of(sent) == expected
    assert [str(w.message) for w in caught if "synchronous iterators" in str(w.message)] == []
    head = asyncio.run(asgi_request("HEAD", STATIC_PATH))  # its headers, and an empty body
    assert head[0]["status"] == 200 and body_of(head) == b""


# --- the admin's LogEntry manager (audit/signals.py wraps log_actions) ------------------------


@pytest.fixture
def log_entry_saves():
    from django.contrib.admin.models import LogEntry
    from django.db.models.signals import post_save

    saved = []

    def receiver(sender, instance, created, **kwargs):
        saved.append(instance)

    post_save.connect(receiver, sender=LogEntry, dispatch_uid="test.eventloop.logentry")
    yield saved
    post_save.disconnect(sender=LogEntry, dispatch_uid="test.eventloop.logentry")


@pytest.mark.django_db
def test_logentry_manager_log_actions_bulk_creates_several_entries_without_post_save(users, log_entry_saves):
    from django.contrib.admin.models import DELETION, LogEntry

    from accounts.models import Team

    teams = [Team.objects.create(organization=users["admin"].organization, name=f"L{i}") for i in range(2)]
    entries = LogEntry.objects.log_actions(users["admin"].pk, teams, DELETION)
    assert isinstance(entries, list) and len(entries) == 2 and all(entry.pk for entry in entries)
    assert log_entry_saves == []  # why audit.signals wraps log_actions: no post_save for these


@pytest.mark.django_db
def test_logentry_manager_log_actions_saves_a_single_object_with_post_save(users, log_entry_saves):
    from django.contrib.admin.models import CHANGE, LogEntry

    from accounts.models import Team

    team = Team.objects.create(organization=users["admin"].organization, name="L")
    entry = LogEntry.objects.log_actions(users["admin"].pk, [team], CHANGE, "Changed.", single_object=True)
    assert isinstance(entry, LogEntry) and log_entry_saves == [entry]


@pytest.mark.django_db
def test_model_admin_logs_through_the_logentry_manager_log_actions(users, monkeypatch):
    from django.contrib import admin
    from django.contrib.admin.models import CHANGE, DELETION, LogEntry

    from accounts.models import Team

    manager = type(LogEntry.objects)
    assert getattr(manager.log_actions, "audited", False)  # audit.signals' wrapper is the one installed
    calls, original = [], manager.log_actions

    def spy(self, user_id, queryset, action_flag, change_message="", *, single_object=False):
        calls.append((action_flag, len(list(queryset)), single_object))
        return original(self, user_id, queryset, action_flag, change_message, single_object=single_object)

    monkeypatch.setattr(manager, "log_actions", spy)
    model_admin = admin.site._registry[Team]
    request = RequestFactory().post("/admin/")
    request.user = users["admin"]
    team = Team.objects.create(organization=users["admin"].organization, name="M")
    model_admin.log_change(request, team, "Changed.")
    model_admin.log_deletions(request, Team.objects.filter(pk=team.pk))
    assert [flag for flag, _, _ in calls] == [CHANGE, DELETION]


def test_every_async_context_builds_its_own_cache_backend():
    """Why relay/eventloop/caches.py shares them per thread: Django's caches are per context, so per request."""
    from django.core.cache import CacheHandler

    first, second = backends_of_two_requests(CacheHandler())
    assert first is not second


def test_a_cache_handler_keeps_its_backends_as_attributes_of_its_connections_store():
    """relay/eventloop/caches.py puts a threading.local there: one backend per thread, shared by the
    thread's async contexts, listed and closed by the handler as before."""
    from django.core.cache import CacheHandler

    from relay.eventloop.caches import share_per_thread

    handler = CacheHandler()
    share_per_thread(handler)
    first, second = backends_of_two_requests(handler)
    assert first is second
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(handler["default"]))
    thread.start()
    thread.join()
    assert elsewhere[0] is not first
    assert handler.all(initialized_only=True) == [first]
    handler.close_all()


def test_cache_backends_built_from_the_same_settings_share_one_redis_client():
    from relay.redis_cache import MeasuredCache, RedisCache

    params = {"KEY_PREFIX": "shared", "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"}}
    location = "redis://127.0.0.1:6379/15"  # built, never connected: no Redis needed
    assert MeasuredCache(location, dict(params)).client is MeasuredCache(location, dict(params)).client
    assert RedisCache(location, dict(params)).client is RedisCache(location, dict(params)).client
    assert MeasuredCache(location, {**params, "KEY_PREFIX": "other"}).client is not \
        MeasuredCache(location, dict(params)).client

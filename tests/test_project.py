"""Project-level promises: settings per mode, deploy checks, the OpenAPI schema, health."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command

from tests.conftest import assert_envelope

PRODUCTION_ENV = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/relay_none",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "SECRET_KEY": "k" * 20 + "a-real-production-secret-of-sufficient-length-123456789",
    "ALLOWED_HOSTS": "relay.example.com",
    "DEBUG": "0",
}


def run_manage(*args, env_overrides, strip=()):
    env = {k: v for k, v in os.environ.items() if k not in strip and not k.startswith(("DJANGO_", "RELAY_"))}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_env():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"DEBUG": "1"}, "DEBUG"),
    ],
)
def test_production_refuses_debug_and_the_default_secret(overrides, message):
    env = {**PRODUCTION_ENV, **overrides}
    strip = ("SECRET_KEY",) if not overrides.get("SECRET_KEY", True) else ()
    if not env["SECRET_KEY"]:
        del env["SECRET_KEY"]
    result = run_manage("check", env_overrides=env, strip=strip + ("SECRET_KEY",))
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_embedded_mode_uses_sqlite_in_wal_mode_and_in_process_layers():
    result = run_manage(
        "shell", "-c",
        "from django.conf import settings as s; from django.db import connection as c; cur = c.cursor(); "
        "cur.execute('PRAGMA journal_mode'); "
        "print(s.DATABASES['default']['ENGINE'], cur.fetchone()[0], s.CACHES['default']['BACKEND'], "
        "s.CHANNEL_LAYERS['default']['BACKEND'], s.CELERY_TASK_ALWAYS_EAGER, s.DEBUG)",
        env_overrides={}, strip=("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [
        "django.db.backends.sqlite3", "wal", "django.core.cache.backends.locmem.LocMemCache",
        "channels.layers.InMemoryChannelLayer", "True", "True",
    ]


def test_openapi_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(out), "--validate", "--fail-on-warn")
    text = out.read_text()
    assert "/api/v1/keys/" in text and "Requires: permission `manage_users`" in text


@pytest.mark.django_db
def test_schema_and_docs_are_served(client):
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


@pytest.mark.django_db
def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readiness_names_the_failing_check(client, monkeypatch):
    from relay import health

    monkeypatch.setattr(health, "_check_database", lambda: "database: OperationalError")
    error = assert_envelope_like(client.get("/readyz"))
    assert "database" in error["message"]
    health.start_draining()
    try:
        monkeypatch.undo()
        error = assert_envelope_like(client.get("/readyz"))
        assert "draining" in error["message"]
    finally:
        health._draining.clear()


def assert_envelope_like(response):
    assert response.status_code == 503
    return response.json()["error"]


def test_no_platform_package_shadows_the_standard_library():
    assert not (settings.BASE_DIR / "platform" / "__init__.py").exists()
    import platform

    assert callable(platform.system)


_ = assert_envelope


def test_every_middleware_runs_on_the_event_loop():
    """One sync-only middleware would send every request through Django's single sync thread."""
    from django.utils.module_loading import import_string

    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert not sync_only


@pytest.mark.django_db
def test_static_files_are_served_without_collectstatic(client):
    response = client.get("/static/css/relay.css")
    assert response.status_code == 200 and b"--accent" in b"".join(response.streaming_content)


@pytest.fixture
def thread_hops(monkeypatch):
    """Every thread-sensitive sync_to_async call from now on: (qualified name, on the shared thread?).

    Outside a ThreadSensitiveContext (Django's per-request one, which RelayASGIHandler skips for
    async views) such a call runs on asgiref's one shared sync thread, where requests queue.
    """
    from asgiref.sync import SyncToAsync

    hops, hop = [], SyncToAsync.__call__

    async def recording_hop(self, *args, **kwargs):
        if self._thread_sensitive:
            name = getattr(self.func, "__qualname__", repr(self.func))
            hops.append((name, SyncToAsync.thread_sensitive_context.get(None) is None))
        return await hop(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", recording_hop)
    return hops


MIDDLEWARE_HOOKS = ("process_request", "process_response", "process_view", "__call__", "__acall__")


def hook_hops(hops, *, shared_only=False) -> list[str]:
    return [name for name, shared in hops if name.endswith(MIDDLEWARE_HOOKS) and (shared or not shared_only)]


def signed_in_client(server, user):
    """An httpx client with user's session and a CSRF cookie; its CSRF token in client.csrf."""
    import httpx
    from django.middleware.csrf import _get_new_csrf_string
    from django.test import Client

    django_client = Client()
    django_client.force_login(user)
    csrf = _get_new_csrf_string()
    client = httpx.Client(base_url=server.url, cookies={
        settings.SESSION_COOKIE_NAME: django_client.cookies[settings.SESSION_COOKIE_NAME].value,
        settings.CSRF_COOKIE_NAME: csrf})
    client.csrf = csrf
    return client


def test_sessions_csrf_and_messages_send_no_middleware_hook_to_the_shared_thread(asgi_server, users, thread_hops):
    """The guard below, for what the console uses: a signed-in page, the session on an async view,
    CSRF-checked POSTs (refused, then accepted), and a message added by one page and shown by the next."""
    from accounts.actions.keys import create_api_key
    from accounts.models import User

    with signed_in_client(asgi_server, users["user"]) as client:
        page = client.get("/keys/")
        assert page.status_code == 200 and users["user"].username.encode() in page.content
        assert hook_hops(thread_hops) == [], thread_hops
        models = client.get("/v1/models")  # an async view, with the session as its credential
        assert models.status_code == 200 and models.json()["data"]
        refused = client.post("/api/v1/keys/", json={"name": "console"})  # no CSRF token
        assert refused.status_code == 403 and "CSRF" in refused.text
        created = client.post("/api/v1/keys/", json={"name": "console"}, headers={"X-CSRFToken": client.csrf})
        assert created.status_code == 201, created.text
        assert hook_hops(thread_hops) == [], thread_hops

    root = User.objects.create_superuser("root", "root@example.com", "correct horse battery staple")
    key = create_api_key(users["user"], "to revoke").key
    with signed_in_client(asgi_server, root) as client:
        revoked = client.post("/admin/accounts/apikey/", data={
            "action": "revoke_selected", "_selected_action": str(key.pk), "index": "0",
            "csrfmiddlewaretoken": client.csrf})
        assert revoked.status_code == 302
        shown = client.get(revoked.headers["Location"])
        assert shown.status_code == 200 and b"Revoked 1 key(s)." in shown.content
    # Storing the message (then clearing it once shown) is the one hop, as Django does it: on the
    # request's own thread, never the shared one.
    assert hook_hops(thread_hops, shared_only=True) == [], thread_hops
    assert set(hook_hops(thread_hops)) == {"MessageMiddleware.process_response"}, thread_hops


def test_the_asgi_handler_gives_a_thread_s_requests_one_cache_backend(monkeypatch):
    """relay/eventloop/caches.py: not one backend built per request (Django's per-context default)."""
    from asgiref.local import Local
    from django.core.cache import caches

    from relay.eventloop.handler import RelayASGIHandler
    from tests.support.caches import backends_of_two_requests

    monkeypatch.setattr(caches, "_connections", Local())  # Django's own; the test's change is undone after
    RelayASGIHandler()
    first, second = backends_of_two_requests(caches)
    assert first is second


def test_relay_message_middleware_builds_the_storage_only_for_a_view_that_uses_it(monkeypatch):
    """relay/eventloop/inline.py: an API request builds no message storage; a page that adds a
    message still has it stored (in the cookie)."""
    from django.contrib.messages import add_message, constants, get_messages
    from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessions
    from django.http import HttpResponse
    from django.test import RequestFactory

    from relay.eventloop import inline

    built, build = [], inline.default_storage
    monkeypatch.setattr(inline, "default_storage", lambda request: built.append(1) or build(request))

    def serve(view, cookies=None):
        request = RequestFactory().get("/")
        request.COOKIES.update(cookies or {})
        DjangoSessions(view).process_request(request)
        middleware = inline.MessageMiddleware(view)
        middleware.process_request(request)
        return middleware.process_response(request, view(request))

    quiet = serve(lambda request: HttpResponse("ok"))
    assert built == [] and "messages" not in quiet.cookies

    def adds(request):
        add_message(request, constants.INFO, "saved")
        return HttpResponse("ok")

    def shows(request):
        return HttpResponse(" ".join(str(message) for message in get_messages(request)))

    added = serve(adds)
    assert built == [1]
    shown = serve(shows, {"messages": added.cookies["messages"].value})
    assert shown.content == b"saved" and shown.cookies["messages"].value == ""  # shown once, then cleared


def test_model_calls_skip_the_sync_thread_and_start_no_thread(asgi_server, users, monkeypatch):
    """Async views: no middleware hook goes through Django's sync thread, and no thread is started
    per request (relay/eventloop/inline.py, relay/eventloop/handler.py). Sync views keep Django's
    thread per request, so they still run side by side."""
    import threading

    import httpx
    from asgiref.sync import SyncToAsync
    from django.core import signals

    from accounts.actions.keys import create_api_key

    headers = {"Authorization": f"Bearer {create_api_key(users['user'], 'k').secret}"}
    assert httpx.get(f"{asgi_server.url}/v1/models", headers=headers).status_code == 200  # the DB pool's thread
    started, hops = [], []
    thread_start, hop = threading.Thread.start, SyncToAsync.__call__

    def counting_start(thread):
        started.append(thread.name)
        return thread_start(thread)

    async def counting_hop(self, *args, **kwargs):
        if self._thread_sensitive:
            hops.append(getattr(self.func, "__name__", repr(self.func)))
        return await hop(self, *args, **kwargs)

    def on_request_signal(sender, signal, **kwargs):
        if fired or signal is signals.request_started:  # not the close of the request before these
            fired.append((signal, threading.current_thread().name))
        if [s for s, _ in fired].count(signals.request_finished) == 3:
            finished.set()  # a response's close (and its signal) may come after the client has the answer

    fired, finished = [], threading.Event()
    monkeypatch.setattr(threading.Thread, "start", counting_start)
    monkeypatch.setattr(SyncToAsync, "__call__", counting_hop)
    signals.request_started.connect(on_request_signal, weak=False)
    signals.request_finished.connect(on_request_signal, weak=False)
    try:
        for _ in range(3):
            assert httpx.get(f"{asgi_server.url}/v1/models", headers=headers).status_code == 200
        assert finished.wait(30), fired
    finally:
        signals.request_started.disconnect(on_request_signal)
        signals.request_finished.disconnect(on_request_signal)
    # The DB pool (relay/eventloop/db.py) is bounded; on a loaded machine it may grow by a thread
    # when a call arrives before the last one's thread marked itself idle. Nothing else may start.
    assert [name for name in started if not name.startswith("relay-db")] == []
    # Not even the request signals or the response's close go to the shared thread: they run on the
    # server's loop, and still run, once each per request.
    assert hops == [], hops
    assert [signal for signal, _ in fired] == [signals.request_started, signals.request_finished] * 3
    assert {thread for _, thread in fired} == {asgi_server.thread.name}, fired
    assert httpx.get(f"{asgi_server.url}/api/v1/me", headers=headers).status_code == 200  # a DRF (sync) view
    assert started

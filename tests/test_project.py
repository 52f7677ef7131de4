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


def test_model_calls_skip_the_sync_thread_and_start_no_thread(asgi_server, users, monkeypatch):
    """Async views: no middleware hook goes through Django's sync thread, and no thread is started
    per request (relay/inline_middleware.py, relay/asgi_handler.py). Sync views keep Django's
    thread per request, so they still run side by side."""
    import threading

    import httpx
    from asgiref.sync import SyncToAsync

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

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    monkeypatch.setattr(SyncToAsync, "__call__", counting_hop)
    for _ in range(3):
        assert httpx.get(f"{asgi_server.url}/v1/models", headers=headers).status_code == 200
    assert started == []
    assert not {"process_request", "process_response", "process_view"} & set(hops), hops
    assert httpx.get(f"{asgi_server.url}/api/v1/me", headers=headers).status_code == 200  # a DRF (sync) view
    assert started

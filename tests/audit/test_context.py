"""The audit context reaches async views, Channels consumers, Celery tasks and management commands."""

import json
import uuid
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.test import AsyncClient
from django.urls import reverse

from audit import actions, context
from audit.asgi import AuditScopeMiddleware
from audit.celery_context import HEADER, bind_task, inject, unbind_task
from audit.models import AuditEvent
from audit.services import arecord, record


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_async_requests_get_a_request_id_and_denials_are_recorded():
    given = str(uuid.uuid4())
    response = await AsyncClient().get(reverse("me"), headers={"X-Request-ID": given})
    assert response.status_code == 401 and response["X-Request-ID"] == given
    event = await AuditEvent.objects.aget(request_id=given)
    assert (event.action, event.status) == (actions.AUTH_FAILED, "denied")
    assert not context.is_bound()  # nothing leaks into the caller's context


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_arecord_takes_the_bound_context():
    with context.bind(request_id="r-1", ip="192.0.2.1", actor_name="svc"):
        event = await arecord(actions.AGENT_RUN, resource="conversation:1")
    assert (event.request_id, event.ip, event.actor_name) == ("r-1", "192.0.2.1", "svc")
    assert await sync_to_async(lambda: AuditEvent.objects.get().hash)() == event.hash


@pytest.mark.asyncio
async def test_consumers_run_inside_the_connections_context():
    seen = {}

    async def consumer(scope, receive, send):
        seen.update(vars(context.current()), scope_id=scope["request_id"])

    user = SimpleNamespace(is_authenticated=True, pk=7, organization_id=3, get_username=lambda: "ws-user")
    scope = {"type": "websocket", "client": ("10.1.2.3", 5000), "user": user,
             "headers": [(b"user-agent", b"wscat"), (b"x-request-id", b"junk")]}
    await AuditScopeMiddleware(consumer)(scope, None, None)
    assert (seen["actor_id"], seen["actor_name"], seen["organization_id"]) == (7, "ws-user", 3)
    assert (seen["ip"], seen["user_agent"]) == ("10.1.2.3", "wscat")
    assert seen["request_id"] == seen["scope_id"] and str(uuid.UUID(seen["request_id"])) == seen["request_id"]
    assert not context.is_bound()


def test_celery_tasks_run_under_the_context_of_the_request_that_queued_them():
    headers = {}
    with context.bind(request_id="req-9", actor_id=5, actor_name="alice", organization_id=2, ip="192.0.2.9"):
        inject(headers=headers)
    assert headers[HEADER]["request_id"] == "req-9"
    inject(headers=(unbound := {}))
    assert unbound == {}  # nothing to carry outside a request
    for carried_as in ({HEADER: headers[HEADER]}, {"headers": {HEADER: headers[HEADER]}}):
        task = SimpleNamespace(request=SimpleNamespace(**carried_as))
        bind_task(task_id="t1", task=task)
        assert (context.current().request_id, context.current().actor_name) == ("req-9", "alice")
        unbind_task(task_id="t1")
        assert not context.is_bound()


def test_celery_headers_cross_a_real_broker():
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    app = Celery("audit-test", broker="memory://", backend="cache+memory://")
    seen = []

    @app.task(name="audit-test.capture")
    def capture():
        seen.append(context.current().request_id)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        with context.bind(request_id="from-the-request"):
            result = capture.delay()
        result.get(timeout=10)
    assert seen == ["from-the-request"]


@pytest.mark.django_db
def test_export_audit_command(tmp_path, capsys):
    record(actions.AGENT_RUN, resource="=HYPERLINK(\"http://evil\")", metadata={"n": 1})
    call_command("export_audit", format="jsonl")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["resource"].startswith("=HYPERLINK") and lines[0]["sequence"] == 1
    target = tmp_path / "audit.csv"
    call_command("export_audit", format="csv", output=str(target), since="2000-01-01", until="2100-01-01T00:00:00Z")
    rows = target.read_text().splitlines()
    assert rows[0].startswith("sequence,time,actor_id") and "'=HYPERLINK" in rows[1]  # no spreadsheet formula
    assert AuditEvent.objects.filter(action=actions.DATA_EXPORTED).count() == 2
    with pytest.raises(CommandError):
        call_command("export_audit", since="last tuesday")

"""Fast checks of the pieces the slow cluster tests rely on: periodic jobs, fault mapping, configs."""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from unittest import mock

import pytest
import redis
from django.db import OperationalError
from django.utils import timezone

from agents import jobs as agent_jobs
from audit import jobs as audit_jobs
from billing import jobs as billing_jobs
from relay import periodic
from relay.api import errors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def running_answers(users):
    from agents.models import Conversation, Message
    from billing.models import ModelPrice

    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    user = users["user"]
    conversation = Conversation.objects.create(organization=user.organization, user=user, agent="general")

    def answer(status, age_seconds, request_id):
        message = Message.objects.create(conversation=conversation, role="assistant", agent="general",
                                         model="fake-large", status=status, request_id=request_id)
        Message.objects.filter(pk=message.pk).update(
            created_at=timezone.now() - dt.timedelta(seconds=age_seconds))
        return message

    return {"orphan": answer("running", 1000, "req-orphan"), "young": answer("running", 5, "req-young"),
            "done": answer("complete", 1000, "req-done")}


@pytest.mark.django_db
def test_only_answers_older_than_any_run_become_interrupted_with_usage_and_audit(running_answers):
    from agents.models import Message
    from audit.models import AuditEvent
    from billing.models import UsageRecord

    assert agent_jobs.mark_interrupted_messages(older_than_seconds=900) == 1
    statuses = {name: Message.objects.get(pk=m.pk).status for name, m in running_answers.items()}
    assert statuses == {"orphan": "interrupted", "young": "running", "done": "complete"}
    usage = UsageRecord.objects.get(request_id="req-orphan")
    assert (usage.status, usage.cost, usage.output_tokens) == ("interrupted", 0, 0)
    event = AuditEvent.objects.get(action="agent.run", metadata__run_id="req-orphan")
    assert (event.status, event.metadata["status"]) == ("error", "interrupted")
    assert agent_jobs.mark_interrupted_messages(older_than_seconds=900) == 0  # once only


@pytest.mark.django_db
def test_a_periodic_job_skips_its_turn_while_another_process_holds_its_lock(running_answers):
    with periodic.single_writer("interrupted") as mine:
        assert mine
        assert agent_jobs.mark_interrupted_messages(older_than_seconds=900) == 0
    assert agent_jobs.mark_interrupted_messages(older_than_seconds=900) == 1


@pytest.mark.django_db
def test_beat_schedule_names_registered_tasks(settings):
    from relay.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
    assert billing_jobs.evaluate_budget_alerts() == 0  # no budgets: nothing to do, no error
    assert billing_jobs.expire_reservations() == 0
    assert audit_jobs.audit_checkpoint()["ok"] is True


@pytest.mark.django_db
@pytest.mark.parametrize("fault", [redis.exceptions.ConnectionError("refused"), OperationalError("server closed")])
def test_lost_redis_or_database_in_a_view_is_a_503_envelope(client_for, users, fault):
    client = client_for(users["api_user"], via="api_key")
    with mock.patch("agents.runner._check_request", side_effect=fault):
        response = client.post("/v1/chat/completions", {"model": "local-mini", "messages": [
            {"role": "user", "content": "hi"}]}, format="json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response["Retry-After"]


def test_lost_redis_outside_a_view_is_a_503_envelope_too(rf):
    from django_redis.exceptions import ConnectionInterrupted

    try:
        raise ConnectionInterrupted(connection=None) from redis.exceptions.ConnectionError("refused")
    except ConnectionInterrupted:
        response = errors.handler500(rf.get("/chat/"))
    assert response.status_code == 503
    try:
        raise ValueError("a bug")
    except ValueError:
        assert errors.handler500(rf.get("/api/v1/me")).status_code == 500  # real bugs stay 500s


def _cluster_module():
    spec = importlib.util.spec_from_file_location("cluster_script", ROOT / "platform" / "scripts" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rendered_nginx_config_is_valid_and_balances_streams_safely(tmp_path):
    from tests.conftest import require

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    require(Path(nginx).exists(), "nginx is not installed")
    cluster = _cluster_module().Cluster(tmp_path)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "nginx" / "temp" / kind).mkdir(parents=True)
    state = {"nginx_host": "127.0.0.1", "nginx_port": 18080, "instances": [
        {"name": "api1", "port": 18101}, {"name": "api2", "port": 18102}]}
    conf = cluster.render_nginx(state, down={"api2"})
    text = conf.read_text()
    assert "least_conn;" in text and "127.0.0.1:18102 max_fails=3 fail_timeout=10s down;" in text
    proxy = (ROOT / "platform" / "nginx" / "proxy.conf").read_text()
    for directive in ("proxy_buffering off;", "proxy_next_upstream error timeout;", "proxy_read_timeout 3600s;",
                      "proxy_set_header Upgrade $http_upgrade;", "$proxy_add_x_forwarded_for"):
        assert directive in proxy
    assert "non_idempotent" not in proxy  # a model call that reached an instance is never sent twice
    checked = subprocess.run([nginx, "-t", "-p", str(tmp_path / "nginx"), "-c", str(conf)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stderr

"""manage.py build_dataset and export_dataset, and the content hash reproduced in another process."""

import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from agents.models import Conversation, Message
from audit import actions
from audit.models import AuditEvent
from tests.training.conftest import T0, build, conversation, dataset, turn
from training.actions import builds
from training.models import DatasetVersion


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_build_dataset_prints_progress_and_the_hash(users, consent, monkeypatch):
    for n in range(5):
        turn(conversation(users["user"]), f"Question {n}", f"Answer {n}")
    monkeypatch.setattr(builds, "PROGRESS_SECONDS", 0)
    ds = dataset(users["admin"].organization)
    output = run("build_dataset", str(ds.pk))
    version = DatasetVersion.objects.get(dataset=ds)
    assert re.search(r"^  \d/5$", output, re.M) and "  5/5" in output
    assert f"sha256 {version.content_sha256}" in output and version.rows == 5
    assert list(AuditEvent.objects.filter(action__startswith="dataset.").values_list("action", flat=True)
                .order_by("sequence")) == ["dataset.build_requested", "dataset.built"]
    with pytest.raises(CommandError, match="no dataset"):
        run("build_dataset", "999999")


@pytest.mark.django_db
def test_build_dataset_refuses_without_consent(users):
    with pytest.raises(CommandError, match="not turned on"):
        run("build_dataset", str(dataset(users["admin"].organization).pk))


@pytest.mark.django_db
def test_export_dataset_writes_a_format_and_is_audited(users, consent, tmp_path):
    turn(conversation(users["user"]), "Q", "A", quality_score=0.6)
    version = build(dataset(users["admin"].organization))
    target = tmp_path / "reward.jsonl"
    call_command("export_dataset", str(version.pk), "--format", "reward", "--output", str(target),
                 stderr=io.StringIO())
    assert [json.loads(line) for line in target.read_text().splitlines()] == [
        {"prompt": "Q", "response": "A", "score": 0.6}]
    event = AuditEvent.objects.get(action=actions.DATA_EXPORTED)
    assert event.metadata["format"] == "reward" and event.resource == f"dataset_version:{version.pk}"
    Conversation.objects.all().delete()
    with pytest.raises(CommandError, match="withdrawn"):
        call_command("export_dataset", str(version.pk), "--output", str(target))


# The same data, inserted in another order, built by another process with another hash seed.

IDS = [uuid.UUID(int=n * 104729 + 11) for n in range(12)]


def _insert(users, order):
    for n in order:
        conv = conversation(users["user" if n % 2 else "admin"], pk=IDS[n])
        question = Message.objects.create(pk=uuid.UUID(int=n * 2 + 1), conversation=conv, role="user",
                                          content=f"Question {n}: what is {n} squared? mail me at a{n}@example.com",
                                          created_at=T0 + dt.timedelta(minutes=n))
        for k in range(2):
            Message.objects.create(pk=uuid.UUID(int=1000 + n * 2 + k), conversation=conv, role="assistant",
                                   parent=question, content=f"{n} squared is {n * n} (take {k}).",
                                   agent="math", model="model-a", quality_score=0.5 + k / 10,
                                   tool_calls=[{"call_id": f"call_{n}", "name": "calculator", "input": {"x": n},
                                                "output": str(n * n), "ok": True}],
                                   created_at=T0 + dt.timedelta(minutes=n, seconds=k))


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _build_elsewhere(dataset_id: int, seed: str) -> str:
    env = {**os.environ, "DATABASE_URL": _database_url(), "PYTHONHASHSEED": seed,
           "RELAY_TRAINING_DIR": str(settings.RELAY_TRAINING_DIR), "DEBUG": "0",
           "SECRET_KEY": os.environ.get("SECRET_KEY") or "test-" + "k" * 50}  # DEBUG off refuses the development key
    done = subprocess.run([sys.executable, "manage.py", "build_dataset", str(dataset_id)], env=env,
                          cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return re.search(r"^sha256 ([0-9a-f]{64})$", done.stdout, re.M).group(1)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_content_hash_is_reproduced_by_another_process(users, consent):
    _insert(users, range(12))
    ds = dataset(users["admin"].organization, validation_percent=25)
    first = _build_elsewhere(ds.pk, "1")
    Conversation.objects.all().delete()
    _insert(users, [5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6])  # the same rows, inserted in another order
    assert _build_elsewhere(ds.pk, "987654") == first
    in_process = build(ds)
    assert in_process.content_sha256 == first and in_process.rows == 24
    Message.objects.filter(pk=uuid.UUID(int=1000 + 7 * 2 + 1)).update(content="49, take one more.")
    assert _build_elsewhere(ds.pk, "2") != first

"""Interactions to build datasets from: conversations as trees of messages, written directly.

The rows are what the runner would have stored (agents.actions.runs); writing them here keeps
the tests about training, and lets a test fix ids, times and the order rows are inserted in.
"""

import datetime as dt
import uuid

import pytest

from agents.models import Conversation, Message
from training.actions.consent import set_consent
from training.models import Dataset

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def training_dir(settings, tmp_path):
    settings.RELAY_TRAINING_DIR = tmp_path / "training"
    return settings.RELAY_TRAINING_DIR


@pytest.fixture(autouse=True)
def eager_tasks(settings):
    """Builds run in the request that asks for them, once it commits (as in `make run`); Celery reads this."""
    settings.CELERY_TASK_ALWAYS_EAGER = True


@pytest.fixture
def consent(users):
    return set_consent(users["admin"].organization, enabled=True, actor=users["admin"])


def conversation(user, *, agent="general", pk=None) -> Conversation:
    return Conversation.objects.create(pk=pk or uuid.uuid4(), user=user, organization_id=user.organization_id,
                                       agent=agent)


def turn(conv, question: str, answer: str, *, parent=None, at=T0, **answer_fields) -> tuple[Message, Message]:
    """A question and its answer in conv; parent: the message the question follows."""
    asked = Message.objects.create(conversation=conv, role="user", content=question, parent=parent, created_at=at)
    answered = answer_to(asked, answer, at=at + dt.timedelta(seconds=1), **answer_fields)
    return asked, answered


def answer_to(question: Message, answer: str, *, at=None, **fields) -> Message:
    fields = {"agent": question.conversation.agent, "model": "model-a", "quality_score": 0.7, **fields}
    return Message.objects.create(conversation=question.conversation, role="assistant", content=answer,
                                  parent=question, created_at=at or question.created_at + dt.timedelta(seconds=1),
                                  **fields)


def dataset(org, **filters) -> Dataset:
    return Dataset.objects.create(organization=org, name=filters.pop("name", "set"), **filters)


def build(ds, actor=None):
    """A version of ds, built in this process (as the Celery task does)."""
    from training.actions.builds import request_build, run_build

    return run_build(request_build(ds, actor=actor, enqueue=False).pk)


def lines_of(version) -> list[dict]:
    import json

    from training import storage

    with open(storage.path(version.file_name), encoding="utf-8") as source:
        return [json.loads(line) for line in source]

"""agents 0007: existing conversations become one branch of the message tree, and back (reversible)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.support.migrations import head, migrate

BEFORE = [("agents", "0006_model_deployments")]
AFTER = [("agents", "0007_conversation_tree")]


@pytest.fixture
def at_0006(transactional_db, users):
    apps = migrate(BEFORE)
    try:
        yield apps
    finally:
        migrate(head())


def test_each_message_follows_the_one_before_it_in_its_conversation(at_0006, users):
    conversation_model, message_model = at_0006.get_model("agents", "Conversation"), at_0006.get_model("agents", "Message")
    user, now = users["user"], timezone.now()
    ids = {}
    for name in ("a", "b"):
        conversation = conversation_model.objects.create(organization_id=user.organization_id, user_id=user.pk,
                                                         agent="math", title=name)
        ids[name] = [message_model.objects.create(conversation=conversation, role=role, content=f"{name}{i}",
                                                  created_at=now + timedelta(seconds=i)).pk
                     for i, role in enumerate(["user", "assistant", "user", "assistant"])]
    apps = migrate(AFTER)
    parents = dict(apps.get_model("agents", "Message").objects.values_list("pk", "parent_id"))
    for chain in ids.values():
        assert [parents[pk] for pk in chain] == [None, *chain[:-1]]
    apps = migrate(BEFORE)
    assert apps.get_model("agents", "Message").objects.count() == 8

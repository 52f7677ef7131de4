"""Each export format, checked structurally; downloads stream, need export_data, and are audited."""

import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from accounts.actions.users import create_user
from audit import actions
from audit.models import AuditEvent
from tests.conftest import assert_envelope
from tests.training.conftest import answer_to, build, conversation, dataset, turn

pytestmark = pytest.mark.django_db

TOOLS = [{"call_id": "call_abc", "name": "calculator", "input": {"expression": "2+2"}, "output": "4", "ok": True},
         {"call_id": "", "name": "search", "input": "two plus two", "output": "four", "ok": True}]


@pytest.fixture
def version(users, consent):
    user = users["user"]
    # A tool-using answer after a first turn (history), and a regenerated answer preferred by feedback.
    conv = conversation(user)
    _, first = turn(conv, "Hello", "Hi! Ask me anything.")
    question, _ = turn(conv, "What is 2+2?", "It is 4.", parent=first, tool_calls=TOOLS, quality_score=0.9,
                       feedback=1)
    answer_to(question, "It is 5.", quality_score=0.2, feedback=-1)
    # Regenerated answers without feedback: the higher quality score is preferred; equal scores make no pair.
    regen = conversation(user)
    asked, _ = turn(regen, "Name a prime.", "7 is prime.", quality_score=0.8)
    answer_to(asked, "9 is prime.", quality_score=0.3)
    tie = conversation(user)
    asked, _ = turn(tie, "Name a colour.", "Blue.", quality_score=0.5)
    answer_to(asked, "Red.", quality_score=0.5)
    # The same question rated +1 and -1 in two conversations.
    turn(conversation(user), "Capital of France?", "Paris.", feedback=1, quality_score=0.95)
    turn(conversation(users["admin"]), "capital of  FRANCE?", "Lyon.", feedback=-1, quality_score=0.1)
    return build(dataset(users["admin"].organization))


def download(client, version, fmt, split="all"):
    response = client.get(reverse("training-version-download", args=[version.pk]) + f"?format={fmt}&split={split}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/jsonl" and response.streaming
    text = b"".join(response.streaming_content).decode()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line parses


def test_chat_lines_carry_history_and_tool_calls_matched_by_id(users, version, client_for):
    rows = download(client_for(users["admin"]), version, "chat")
    assert len(rows) == version.rows == 9
    for row in rows:
        assert set(row) == {"messages"}
        messages = row["messages"]
        assert messages[-1]["role"] == "assistant" and messages[0]["role"] == "user"
        pending = []
        for message in messages:
            assert message["role"] in ("user", "assistant", "tool")
            if message["role"] == "tool":
                assert message["tool_call_id"] == pending.pop(0)
            elif message.get("tool_calls"):
                assert not pending
                pending = [call["id"] for call in message["tool_calls"]]
                for call in message["tool_calls"]:
                    assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
                    json.loads(call["function"]["arguments"]) if call["id"] == "call_abc" else None
            else:
                assert not pending and isinstance(message["content"], str)
        assert not pending
    with_tools = next(r["messages"] for r in rows if any(m.get("tool_calls") for m in r["messages"]))
    assert [m["role"] for m in with_tools] == ["user", "assistant", "user", "assistant", "tool", "tool", "assistant"]
    ids = [call["id"] for call in with_tools[3]["tool_calls"]]
    assert ids[0] == "call_abc" and ids[1] and len(set(ids)) == 2
    assert [m["content"] for m in with_tools[4:6]] == ["4", "four"]


def test_preference_pairs_from_regenerated_answers_and_feedback(users, version, client_for):
    pairs = download(client_for(users["admin"]), version, "preference")
    for pair in pairs:
        assert {"prompt", "chosen", "rejected"} <= set(pair)
        assert all(isinstance(pair[k], str) and pair[k] for k in ("prompt", "chosen", "rejected"))
        assert pair["chosen"] != pair["rejected"]
    found = {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}
    assert found == {("What is 2+2?", "It is 4.", "It is 5."), ("Name a prime.", "7 is prime.", "9 is prime."),
                     ("Capital of France?", "Paris.", "Lyon.")}
    assert len(pairs) == 3  # the +1/-1 siblings are paired once


def test_reward_rows(users, version, client_for):
    rows = download(client_for(users["admin"]), version, "reward")
    assert len(rows) == 9
    for row in rows:
        assert set(row) == {"prompt", "response", "score"} and 0 <= row["score"] <= 1
    assert {"prompt": "What is 2+2?", "response": "It is 5.", "score": 0.2} in rows


def test_splits_partition_the_rows(users, version, client_for):
    client = client_for(users["admin"])
    train, validation = download(client, version, "chat", "train"), download(client, version, "chat", "validation")
    assert len(train) + len(validation) == 9
    assert (len(train), len(validation)) == (version.train_rows, version.validation_rows)


def test_each_download_is_audited_as_an_export(users, version, client_for):
    download(client_for(users["admin"]), version, "reward")
    event = AuditEvent.objects.get(action=actions.DATA_EXPORTED)
    assert event.resource == f"dataset_version:{version.pk}" and event.actor_id == users["admin"].pk
    assert event.metadata["format"] == "reward" and event.metadata["content_sha256"] == version.content_sha256


def test_a_download_needs_export_data_as_well(org, users, version, client_for):
    group = Group.objects.create(name="trainer")
    group.permissions.set(Permission.objects.filter(codename="manage_training"))
    trainer = create_user("trainer", organization=org, role="trainer", email="t@example.com", password="x" * 20)
    client = client_for(trainer)
    assert client.get(reverse("training-version-detail", args=[version.pk])).status_code == 200
    assert_envelope(client.get(reverse("training-version-download", args=[version.pk])), 403, "permission_denied")
    assert not AuditEvent.objects.filter(action=actions.DATA_EXPORTED).exists()


def test_bad_download_queries(users, version, client_for, other_users):
    client = client_for(users["admin"])
    url = reverse("training-version-download", args=[version.pk])
    assert set(assert_envelope(client.get(url + "?format=csv"), 400)["fields"]) == {"format"}
    assert set(assert_envelope(client.get(url + "?split=test"), 400)["fields"]) == {"split"}
    assert_envelope(client_for(other_users["admin"]).get(url), 404)

"""Conversations you can manage: rename, pin, search, delete; regenerate and edit as sibling versions."""

import pytest
from django.urls import reverse

from agents.models import Conversation, Message
from audit import actions
from audit.models import AuditEvent
from billing.models import UsageRecord
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db


def ask(client, query="integrate x^2", agent="math", **extra):
    body = {"agent_type": agent, **({"query": query} if query is not None else {}), **extra}
    response = client.post(reverse("query"), body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def detail(client, conversation_id):
    response = client.get(reverse("conversation-detail", args=[conversation_id]))
    assert response.status_code == 200, response.content
    return response.json()


def test_a_run_titles_its_conversation_with_a_summary_of_the_question(users, client_for):
    answer = ask(client_for(users["user"]), "Hi there! Could you please integrate x^2 for me? Thanks")
    assert Conversation.objects.get(pk=answer["conversation_id"]).title == "Integrate x^2 for me?"


def test_the_owner_renames_and_pins_audited_once_each(users, client_for):
    client = client_for(users["user"])
    conversation_id = ask(client)["conversation_id"]
    before = Conversation.objects.get(pk=conversation_id).updated_at
    url = reverse("conversation-detail", args=[conversation_id])
    renamed = client.patch(url, {"title": "  Calculus   homework ✓ 微积分 "}, format="json")
    assert renamed.status_code == 200, renamed.content
    assert renamed.json()["title"] == "Calculus homework ✓ 微积分"
    pinned = client.patch(url, {"pinned": True}, format="json")
    assert pinned.json()["pinned"] is True
    stored = Conversation.objects.get(pk=conversation_id)
    assert (stored.title, stored.pinned, stored.updated_at) == ("Calculus homework ✓ 微积分", True, before)
    updates = events(actions.CONVERSATION_UPDATED)
    assert [e.metadata for e in updates] == [{"fields": ["title"]}, {"fields": ["pinned"], "pinned": True}]
    assert all(e.resource == f"conversation:{conversation_id}" and "Calculus" not in str(e.metadata) for e in updates)


@pytest.mark.parametrize("body", [
    {}, {"title": ""}, {"title": "   "}, {"title": "x" * 201}, {"title": 5}, {"title": None}, {"pinned": "yes"},
    {"pinned": 1}, {"title": ["a"]}, {"owner": 3}, {"title": "ok", "agent": "code"},
])
def test_bad_updates_are_400_and_change_nothing(users, client_for, body):
    client = client_for(users["user"])
    conversation_id = ask(client)["conversation_id"]
    response = client.patch(reverse("conversation-detail", args=[conversation_id]), body, format="json")
    assert_envelope(response, 400)
    assert events(actions.CONVERSATION_UPDATED) == []
    assert Conversation.objects.get(pk=conversation_id).title == "Integrate x^2"


def test_put_is_not_allowed(users, client_for):
    client = client_for(users["user"])
    conversation_id = ask(client)["conversation_id"]
    assert_envelope(client.put(reverse("conversation-detail", args=[conversation_id]), {"title": "t"},
                               format="json"), 405)


@pytest.mark.parametrize("other", ["same_org", "other_org"])
def test_another_user_can_neither_see_rename_pin_delete_nor_regenerate(users, other_users, client_for, other):
    owner = client_for(users["user"])
    answer = ask(owner)
    conversation_id = answer["conversation_id"]
    stranger = client_for(users["admin"] if other == "same_org" else other_users["admin"])
    url = reverse("conversation-detail", args=[conversation_id])
    assert_envelope(stranger.patch(url, {"title": "mine now"}, format="json"), 404)
    assert_envelope(stranger.patch(url, {"pinned": True}, format="json"), 404)
    assert_envelope(stranger.delete(url), 404)
    assert_envelope(stranger.get(url), 404)
    regenerate = stranger.post(reverse("query"), {"agent_type": "math", "conversation_id": conversation_id,
                                                  "regenerate": answer["message_id"]}, format="json")
    assert_envelope(regenerate, 404)
    assert stranger.get(reverse("conversation-list"), {"search": "integrate"}).json()["results"] == []
    stored = Conversation.objects.get(pk=conversation_id)
    assert (stored.title, stored.pinned, stored.messages.count()) == ("Integrate x^2", False, 2)
    assert events(actions.CONVERSATION_UPDATED) == [] and events(actions.CONVERSATION_DELETED) == []
    assert len(events("permission.hidden_object")) >= 1


def test_search_matches_titles_and_messages_and_pinned_come_first(users, client_for):
    client = client_for(users["user"])
    first = ask(client, "integrate x^2")["conversation_id"]
    second = ask(client, "solve x^2-5x+6=0")["conversation_id"]
    third = ask(client, "what is 15% of 240")["conversation_id"]
    listed = lambda **q: [c["id"] for c in client.get(reverse("conversation-list"), q).json()["results"]]  # noqa: E731
    assert listed() == [third, second, first]
    client.patch(reverse("conversation-detail", args=[first]), {"pinned": True}, format="json")
    assert listed() == [first, third, second]
    assert listed(search="SOLVE") == [second]  # the title
    assert listed(search="X^{3}") == [first]  # the answer's LaTeX: a message, not the title
    assert listed(search="%") == [third]  # LIKE's wildcards are matched literally
    assert listed(search="nothing like this") == []
    assert_envelope(client.get(reverse("conversation-list"), {"search": "x" * 201}), 400)


def test_delete_removes_the_conversation_audited_once(users, client_for):
    client = client_for(users["user"])
    conversation_id = ask(client)["conversation_id"]
    assert client.delete(reverse("conversation-detail", args=[conversation_id])).status_code == 204
    assert not Conversation.objects.filter(pk=conversation_id).exists()
    assert len(events(actions.CONVERSATION_DELETED)) == 1


def test_regenerate_keeps_the_earlier_answer_as_a_sibling_billed_as_its_own_run(users, client_for):
    client = client_for(users["user"])
    first = ask(client, "integrate x^2")
    conversation_id = first["conversation_id"]
    again = ask(client, None, conversation_id=conversation_id, regenerate=first["message_id"])
    assert again["conversation_id"] == conversation_id and again["message_id"] != first["message_id"]
    assert r"\frac{x^{3}}{3}" in again["answer"]
    old, new = Message.objects.get(pk=first["message_id"]), Message.objects.get(pk=again["message_id"])
    question = Message.objects.get(conversation_id=conversation_id, role="user")  # asked once, answered twice
    assert old.parent_id == new.parent_id == question.pk and question.content == "integrate x^2"
    # Its own run: its own usage record and agent.run event, never the response cache's free replay.
    records = UsageRecord.objects.filter(message_id__in=[old.pk, new.pk])
    assert records.count() == 2 and all(r.cost > 0 and not r.cached for r in records)
    assert len(events("agent.run")) == 2
    messages = detail(client, conversation_id)["messages"]
    assert [(m["role"], m["parent"]) for m in messages] == [
        ("user", None), ("assistant", str(question.pk)), ("assistant", str(question.pk))]


def test_edit_makes_a_new_branch_and_history_follows_the_branch(users, client_for):
    client = client_for(users["user"])
    first = ask(client, "integrate x^2", agent="general")
    conversation_id = first["conversation_id"]
    follow = ask(client, "and now x^3", agent="general", conversation_id=conversation_id)
    original_question = Message.objects.get(conversation_id=conversation_id, content="integrate x^2")
    edited = ask(client, "integrate x^4", agent="general", conversation_id=conversation_id,
                 edit=str(original_question.pk))
    new_question = Message.objects.get(conversation_id=conversation_id, content="integrate x^4")
    assert new_question.parent_id is None and original_question.parent_id is None  # siblings at the root
    assert Message.objects.get(pk=edited["message_id"]).parent_id == new_question.pk
    # The follow-up stays on the old branch, under the first answer.
    follow_question = Message.objects.get(conversation_id=conversation_id, content="and now x^3")
    assert str(follow_question.parent_id) == first["message_id"]
    assert Message.objects.get(pk=follow["message_id"]).parent_id == follow_question.pk
    # A new turn continues the latest branch: its history holds the edited question, not the old one.
    from agents import history as branches
    from agents import runner

    req = runner.RunRequest(user=users["user"], api_key=None, agent="general", query="next",
                            conversation_id=conversation_id)
    history = branches.branch_history(req, Conversation.objects.get(pk=conversation_id))
    assert [h["content"] for h in history][0] == "integrate x^4" and len(history) == 2
    assert req.follows == edited["message_id"]


def test_a_new_question_follows_the_version_shown(users, client_for):
    client = client_for(users["user"])
    first = ask(client, "integrate x^2", agent="general")
    cid = first["conversation_id"]
    again = ask(client, None, agent="general", conversation_id=cid, regenerate=first["message_id"])
    follow = ask(client, "and x^3", agent="general", conversation_id=cid, parent=first["message_id"])
    question = Message.objects.get(conversation_id=cid, content="and x^3")
    assert str(question.parent_id) == first["message_id"] != again["message_id"]
    assert Message.objects.get(pk=follow["message_id"]).parent_id == question.pk
    other = ask(client, "solve x^2-5x+6=0")
    assert_envelope(client.post(reverse("query"), {"agent_type": "general", "query": "q", "conversation_id": cid,
                                                   "parent": other["message_id"]}, format="json"), 404)
    assert_envelope(client.post(reverse("query"), {"agent_type": "general", "query": "q",
                                                   "parent": first["message_id"]}, format="json"), 400)


@pytest.mark.parametrize("case", ["answer_as_question", "question_as_answer", "unknown", "no_conversation", "both",
                                  "other_conversation", "not_uuid", "edit_without_query"])
def test_bad_regenerate_and_edit_are_4xx(users, client_for, case):
    client = client_for(users["user"])
    first = ask(client)
    other = ask(client, "solve x^2-5x+6=0")
    question = Message.objects.get(conversation_id=first["conversation_id"], role="user")
    cid = first["conversation_id"]
    body, status = {
        "answer_as_question": ({"conversation_id": cid, "edit": first["message_id"], "query": "q"}, 404),
        "question_as_answer": ({"conversation_id": cid, "regenerate": str(question.pk)}, 404),
        "unknown": ({"conversation_id": cid, "regenerate": "00000000-0000-0000-0000-000000000000"}, 404),
        "no_conversation": ({"regenerate": first["message_id"]}, 400),
        "both": ({"conversation_id": cid, "regenerate": first["message_id"], "edit": str(question.pk)}, 400),
        "other_conversation": ({"conversation_id": other["conversation_id"], "regenerate": first["message_id"]}, 404),
        "not_uuid": ({"conversation_id": cid, "regenerate": "nope"}, 400),
        "edit_without_query": ({"conversation_id": cid, "edit": str(question.pk)}, 400),
    }[case]
    assert_envelope(client.post(reverse("query"), {"agent_type": "math", **body}, format="json"), status)
    assert Message.objects.filter(conversation_id=cid).count() == 2

"""The response cache serves an answer only to a caller who could have produced it.

Control: the response cache's key (billing/optimizer): agent, model, query, and for an agent
whose tools read documents, the documents the caller may read and whether they may read them.
"""

import pytest
from django.urls import reverse
from guardian.shortcuts import remove_perm

from accounts.services import create_api_key
from agents.documents import SHARE_PERMISSION, share_document, store_document
from billing.models import UsageRecord

pytestmark = pytest.mark.django_db

QUESTION = "When does Project Quillfeather launch?"
PASSAGE = b"Project Quillfeather launches on the ninth of March with a budget of 4.2 million."
SECRET = "ninth of March"


def ask(client, query=QUESTION, agent="general"):
    """(answer text, whether it came from the cache, the text of its tool outputs)."""
    response = client.post(reverse("query"), {"query": query, "agent_type": agent}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    cached = UsageRecord.objects.get(message_id=body["message_id"]).cached
    return body["answer"], cached, " ".join(call.get("output", "") for call in body["tool_calls"])


@pytest.fixture
def keyed():
    """keyed(user, **grants) -> a client calling with a new API key of user (create_api_key's grants)."""
    from rest_framework.test import APIClient

    def make(user, **grants):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(user, 'cache test', **grants).secret}")
        return client

    return make


def test_the_general_agent_never_serves_one_users_private_passage_to_another(users, other_users, keyed):
    owner, colleague = users["user"], users["api_user"]
    document = store_document(name="plan.txt", data=PASSAGE, content_type="text/plain", owner=owner)
    mine = keyed(owner)
    answer, cached, _ = ask(mine)
    assert SECRET in answer and not cached
    answer, cached, _ = ask(mine)
    assert SECRET in answer and cached  # the owner's answer is cached (and served to the owner)

    theirs = keyed(colleague)
    answer, cached, _ = ask(theirs)
    assert SECRET not in answer and not cached, answer  # computed for the colleague, not replayed
    assert SECRET not in ask(theirs)[0]

    share_document(document, users=[colleague])  # visibility grows: the colleague's answer follows
    assert SECRET in ask(theirs)[0]
    remove_perm(SHARE_PERMISSION, colleague, document)  # and shrinks again
    assert SECRET not in ask(theirs)[0]

    # Another organization never hits this organization's entries, not even its admin.
    answer, cached, _ = ask(keyed(other_users["admin"]))
    assert SECRET not in answer and not cached


def test_callers_who_see_different_documents_never_share_an_entry(users, keyed):
    # Two readers whose visible sets have the same size, newest document and id sum: only the
    # documents themselves tell them apart (an aggregate of ids is not a key).
    owner, first, second = users["user"], users["api_user"], users["viewer"]
    texts = [PASSAGE] + [f"Meeting notes number {n} about the quarterly garden party.".encode() for n in range(5)]
    docs = [store_document(name=f"d{n}.txt", data=text, content_type="text/plain", owner=owner)
            for n, text in enumerate(texts)]
    ids = [d.pk for d in docs]
    assert ids == list(range(ids[0], ids[0] + 6))
    for reader, picked in ((first, (0, 4, 5)), (second, (1, 3, 5))):
        for n in picked:
            share_document(docs[n], users=[reader])
    for agent in ("rag", "general"):
        answer, _, _ = ask(keyed(first), agent=agent)
        assert SECRET in answer, agent
        answer, cached, _ = ask(keyed(second), agent=agent)
        assert SECRET not in answer and not cached, (agent, answer)


def test_without_use_rag_agent_the_general_agent_reads_only_relays_own_documentation(users, keyed):
    # Control: agents.documents (reading documents needs use_rag_agent on every path) + the
    # permission in the cache key.
    owner = users["user"]
    store_document(name="plan.txt", data=PASSAGE, content_type="text/plain", owner=owner)
    math_only, with_rag = keyed(owner, scopes=["use_math_agent"]), keyed(owner, scopes=["use_rag_agent"])

    answer, cached, tools = ask(math_only)
    assert SECRET not in answer and SECRET not in tools and not cached, answer
    answer, _, tools = ask(math_only, query="How does Relay reserve the budget before a model call?")
    assert "From **" in answer and tools  # Relay's own documentation is still searched

    # An answer computed without document access is not served to a caller with it ...
    answer, cached, _ = ask(with_rag)
    assert SECRET in answer and not cached
    # ... and one computed with access never reaches a caller without it.
    answer, _, tools = ask(math_only)
    assert SECRET not in answer and SECRET not in tools
    answer, cached, _ = ask(keyed(owner, scopes=["use_code_agent"]))
    assert SECRET not in answer

"""The response cache serves an answer only to a caller who could have produced it.

Control: the response cache's key (agents/optimizer): agent, model, query, and for an agent
whose tools read documents, the documents the caller may read and whether they may read them.
"""

import pytest
from django.urls import reverse
from guardian.shortcuts import remove_perm

from accounts.actions.keys import create_api_key
from agents.actions.documents import share_document, upload_document
from agents.documents import SHARE_PERMISSION
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
    document = upload_document(owner, name="plan.txt", data=PASSAGE, content_type="text/plain")
    mine = keyed(owner)
    answer, cached, _ = ask(mine)
    assert SECRET in answer and not cached
    answer, cached, _ = ask(mine)
    assert SECRET in answer and cached  # the owner's answer is cached (and served to the owner)

    theirs = keyed(colleague)
    answer, cached, _ = ask(theirs)
    assert SECRET not in answer and not cached, answer  # computed for the colleague, not replayed
    assert SECRET not in ask(theirs)[0]

    share_document(owner, document, user_ids=[colleague.pk])  # visibility grows: the colleague's answer follows
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
    docs = [upload_document(owner, name=f"d{n}.txt", data=text, content_type="text/plain")
            for n, text in enumerate(texts)]
    ids = [d.pk for d in docs]
    assert ids == list(range(ids[0], ids[0] + 6))
    for reader, picked in ((first, (0, 4, 5)), (second, (1, 3, 5))):
        for n in picked:
            share_document(owner, docs[n], user_ids=[reader.pk])
    for agent in ("rag", "general"):
        answer, _, _ = ask(keyed(first), agent=agent)
        assert SECRET in answer, agent
        answer, cached, _ = ask(keyed(second), agent=agent)
        assert SECRET not in answer and not cached, (agent, answer)


def test_without_use_rag_agent_the_general_agent_reads_only_relays_own_documentation(users, keyed):
    # Control: agents.documents (reading documents needs use_rag_agent on every path) + the
    # permission in the cache key.
    owner = users["user"]
    upload_document(owner, name="plan.txt", data=PASSAGE, content_type="text/plain")
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



def test_an_answer_that_read_a_document_shared_during_its_run_is_not_cached_for_others(users, keyed):
    # Control: remember stores an answer only if every document it read was readable when its key was made.
    from asgiref.sync import async_to_sync

    from agents import runner

    owner, reader, bystander = users["user"], users["api_user"], users["viewer"]
    document = upload_document(owner, name="plan.txt", data=PASSAGE, content_type="text/plain")
    run = async_to_sync(runner.prepare)(runner.RunRequest(user=reader, api_key=None, agent="general",
                                                          query=QUESTION))
    share_document(owner, document, user_ids=[reader.pk])  # after the key was made, before the search ran
    assert SECRET in async_to_sync(runner.collect)(run)["answer"]
    # The bystander can read what the reader could when the key was made, but not the document.
    answer, cached, _ = ask(keyed(bystander))
    assert SECRET not in answer and not cached, answer


def test_a_question_with_no_stored_answer_reads_no_documents_before_the_model(users, monkeypatch):
    # Control: optimizer.plan reads the caller's documents only when the question's probe is marked,
    # and serves an answer only under the key completed with them.
    from asgiref.sync import async_to_sync

    from agents import optimizer
    from agents.providers.catalog import resolve
    from agents.registry import get_agent
    from agents.runner import RunRequest

    owner, colleague = users["user"], users["api_user"]
    upload_document(owner, name="plan.txt", data=PASSAGE, content_type="text/plain")

    def planned(user):
        request = RunRequest(user=user, api_key=None, agent="general", query="A question nobody asked yet")
        return async_to_sync(optimizer.plan)(request, get_agent("general"), resolve(None), [])

    tables = _tables_read(monkeypatch)
    first = planned(owner)
    assert first.probe and not first.hit and not _reads_documents(tables)
    async_to_sync(optimizer.remember)(first, "complete", "The stored answer.", {})  # keyed by the owner's documents

    tables.clear()
    again = planned(owner)
    assert again.cached_answer == "The stored answer." and _reads_documents(tables)
    other = planned(colleague)  # the probe is marked, but the colleague sees other documents
    assert other.cache_key and other.cache_key != again.cache_key and not other.hit


# -- every agent, including one registered later ----------------------------------------------------


async def _read_notes(arguments, ctx):
    """A tool a new agent might add: it reads the caller's documents and declares nothing."""
    from agents.core import ToolOutcome
    from agents.documents import search
    from agents.kinds.rag import format_passages
    from relay.eventloop.db import db

    return ToolOutcome(output=format_passages(await db(search)(ctx.user, arguments.get("topic", ""),
                                                                api_key=ctx.api_key)))


def _notes_agent():
    from agents.core import Agent, Tool

    notes = Tool(name="read_notes", description="Read the user's notes on a topic.",
                 parameters={"type": "object", "properties": {"topic": {"type": "string"}}}, call=_read_notes)

    class NotesAgent(Agent):
        name, title, tools = "notes", "Notes", [notes]

        async def answer_locally(self, ctx):
            async for event in ctx.use(notes, {"topic": ctx.query}):
                yield event
            yield ctx.last_outcome.output

    return NotesAgent()


def _tables_read(monkeypatch) -> set:
    """The tables every ORM query reads from now on, on any thread."""
    from django.db.models.sql.compiler import SQLCompiler

    tables, original = set(), SQLCompiler.execute_sql

    def execute_sql(self, *args, **kwargs):
        tables.update(alias.table_name for alias in self.query.alias_map.values())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "execute_sql", execute_sql)
    return tables


async def _exercise(agent, ctx):
    """The agent's local engine, then each tool called as a model would call it."""
    from agents.core import ToolFailed

    async for _ in agent.answer_locally(ctx):
        pass
    for tool in agent.tools:
        properties = tool.parameters.get("properties", {})
        arguments = {name: QUESTION for name, spec in properties.items() if spec.get("type") == "string"}
        try:
            await tool.call(arguments, ctx)
        except ToolFailed:
            pass


def _reads_documents(tables) -> bool:
    return any(table.startswith("agents_document") for table in tables)


def test_every_agent_whose_tools_read_documents_keys_its_answers_by_them(users, monkeypatch):
    # Control: the one function that builds the cache key derives what it holds from what the
    # agent's tools declare; an agent with a tool that declares nothing is not cached.
    from asgiref.sync import async_to_sync

    from accounts.roles import AGENT_PERMISSIONS
    from agents import optimizer
    from agents.core import RunContext
    from agents.providers.catalog import resolve
    from agents.registry import all_agents
    from agents.runner import RunRequest

    monkeypatch.setitem(AGENT_PERMISSIONS, "notes", None)
    monkeypatch.setitem(all_agents(), "notes", _notes_agent())
    owner, colleague = users["user"], users["api_user"]
    upload_document(owner, name="plan.txt", data=PASSAGE, content_type="text/plain")
    math_only = create_api_key(owner, "math only", scopes=["use_math_agent"]).key

    def key(agent, user, api_key=None):
        request = RunRequest(user=user, api_key=api_key, agent=agent.name, query=QUESTION)
        plan = optimizer.decide(request, agent, resolve(None), [])
        plan.complete_key()  # as a lookup or a store does
        return plan.cache_key

    tables = _tables_read(monkeypatch)
    readers = set()
    for name, agent in sorted(all_agents().items()):
        tables.clear()
        async_to_sync(_exercise)(agent, RunContext(query=QUESTION, user=owner))
        if not _reads_documents(tables):
            tables.clear()
            key(agent, owner)
            assert not _reads_documents(tables), f"{name}: visibility computed for an agent that reads no documents"
            continue
        readers.add(name)
        mine = key(agent, owner)
        # Either not cached at all, or keyed apart from a colleague who sees other documents and
        # from the same owner acting through a key without use_rag_agent.
        assert mine is None or mine not in (key(agent, colleague), key(agent, owner, math_only)), name
    assert {"general", "rag", "notes"} <= readers


@pytest.mark.django_db(transaction=True)
def test_across_two_instances_a_cached_private_answer_reaches_only_its_owner(users, settings):
    """The cache is shared by every instance (Redis in production): the owner's answer, cached by one
    instance, is replayed to the owner by the other and never to a colleague."""
    import httpx

    from billing.models import ModelPrice
    from tests.support.live import instances

    settings.RELAY_DB_THREAD_SENSITIVE = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1", "localhost"]
    ModelPrice.objects.get_or_create(model="local-mini", defaults={"input_per_1k": "0.0001", "output_per_1k": "0.0002"})
    owner, colleague = users["user"], users["api_user"]
    upload_document(owner, name="plan.txt", data=PASSAGE, content_type="text/plain")
    mine, theirs = create_api_key(owner, "owner").secret, create_api_key(colleague, "colleague").secret

    def ask_at(url, secret):
        response = httpx.post(f"{url}/api/v1/query", timeout=60, headers={"Authorization": f"Bearer {secret}"},
                              json={"query": QUESTION, "agent_type": "general", "model": "local-mini"})
        assert response.status_code == 200, response.content
        body = response.json()
        return body["answer"], UsageRecord.objects.get(message_id=body["message_id"]).cached

    with instances(2) as urls:
        first, second = urls[0], urls[-1]
        answer, cached = ask_at(first, mine)
        assert SECRET in answer and not cached
        answer, cached = ask_at(second, mine)
        assert SECRET in answer and cached  # the other instance replays the owner's cached answer
        answer, cached = ask_at(second, theirs)
        assert SECRET not in answer and not cached, answer
        answer, cached = ask_at(first, theirs)
        assert SECRET not in answer, answer


def test_an_answer_shaped_by_the_math_permission_is_cached_for_nobody(users, keyed):
    # Control: the general agent marks its math-looking answers PER_CALLER whether or not it points
    # at the math agent (agents/kinds/general.py); the key does not hold the caller's agent permissions.
    owner = users["user"]
    without_math, with_math = keyed(owner, allowed_agents=["general"]), keyed(owner)
    answer, cached, _ = ask(without_math, query="2 + 2")
    assert "**Math**" not in answer and not cached, answer
    answer, cached, _ = ask(with_math, query="2 + 2")
    assert "**Math**" in answer and not cached, answer  # told what it may use, not the other key's answer
    answer, cached, _ = ask(without_math, query="2 + 2")
    assert "**Math**" not in answer and not cached, answer

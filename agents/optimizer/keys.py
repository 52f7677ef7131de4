"""The response cache's key: everything that determines an answer, decided in one function.

`answer_key` is where the optimizer gets every key. It holds the tenant, the agent (its name,
system prompt and tools), the model, the normalized question, a digest of the conversation so
far, and whatever the agent's tools declare they read (`agents.core.Tool.depends_on`): for
DOCUMENTS, whether the caller may read documents at all (`use_rag_agent`) and a digest of
exactly the ones they may read — computed only for such agents, in one query, and only when it
can matter (`PendingKey`: when some answer to the question is stored, or one is stored). An answer that
depends on anything a key cannot hold is not cached: a tool that declares nothing (a new tool
is uncached until it says what it reads), an attachment, client-side tools, sampling
(temperature > 0), earlier turns, or the caller's `cache: false`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

from agents.core import DOCUMENTS
from agents.optimizer.cache import cache_key

KEYABLE = frozenset({DOCUMENTS})  # what answer_key knows how to put in a key


@dataclass(frozen=True)
class AnswerKey:
    value: str
    documents: frozenset[int] | None = None  # the documents the caller could read when it was made

    def admits(self, facts: dict) -> bool:
        """May the answer of a run with these facts be stored under this key? Not if it read a
        document outside the key's set (shared after the key was made): others with that set may
        not read it. A run that read less (unshared meanwhile) is fine."""
        if self.documents is None:
            return True
        return {passage.document_id for passage in facts.get("passages", ())} <= self.documents


ANY_READER = "any"  # a probe's documents: never the value of a real key ("-", "read:…", "builtin:…")


@dataclass(frozen=True, eq=False)
class PendingKey:
    """The key of an agent that reads documents, before the caller's documents are read.

    Reading them is the dearest part of a key (a scoped query, several milliseconds before the
    first token), and most questions have no stored answer to find. `probe` is the key with the
    documents left out; whoever stores an answer under a complete key also marks its probe, so a
    probe that is not marked is a miss without the query. A marked probe only says that someone
    in the tenant stored an answer to this question: the answer is served only under the
    `complete()` key, which holds exactly the documents this caller may read.
    """

    probe: str
    material: dict  # cache_key's arguments but `documents`
    user: object
    api_key: object

    def complete(self) -> AnswerKey:
        """The whole key (sync ORM code, for a DB thread): with the documents the caller may read now."""
        documents, readable = _documents(self.user, self.api_key)
        return AnswerKey(cache_key(**self.material, documents=documents), readable)


def answer_key(req, agent, model: str, history: list[dict], tenant: str) -> AnswerKey | PendingKey | None:
    """The key of this request's answer (pending when it needs the caller's documents), or None
    when the answer must not be cached.

    tenant: the organization for good (id + creation time: ids can be reused).
    """
    inputs = agent.depends_on
    if inputs is None or not inputs <= KEYABLE or not _cacheable(req, history):
        return None
    material = {"query": req.query, "agent": _identity(agent), "model": model, "organization": tenant,
                "history": _digest([history, req.messages])}
    if DOCUMENTS in inputs:
        return PendingKey(cache_key(**material, documents=ANY_READER), material, req.user, req.api_key)
    return AnswerKey(cache_key(**material, documents="-"))


def _cacheable(req, history) -> bool:
    # Earlier turns would need their own key material (and rarely repeat); a single question may be cached.
    raw = req.messages
    single_question = raw is None or (len(raw) == 1 and raw[0].get("role") == "user")
    return bool(getattr(req, "cache", True) and not history and single_question and not req.attachment
                and not req.client_tools and not (req.temperature or 0) > 0)


def _documents(user, api_key) -> tuple[str, frozenset[int]]:
    """Whether the caller may read documents and a digest of exactly the ones they can search now
    (upload, delete, share, team or role changes all change it: an aggregate such as count, max
    and sum would not, different sets collide); and those documents' ids."""
    from agents.documents import may_read_documents, readable_documents

    allowed = may_read_documents(user, api_key)
    ids = list(readable_documents(user, api_key).order_by("pk").values_list("pk", flat=True))
    return f"{'read' if allowed else 'builtin'}:{_digest(ids)}", frozenset(ids)


@lru_cache(maxsize=64)
def _identity(agent) -> str:
    """The agent as its answers see it: a changed prompt or tool set starts afresh."""
    return f"{agent.name}:{_digest([agent.system_prompt, [tool.spec() for tool in agent.tools]])[:16]}"


def _digest(material) -> str:
    return hashlib.sha256(json.dumps(material, ensure_ascii=False, sort_keys=True, default=str).encode()).hexdigest()

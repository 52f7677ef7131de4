"""The response cache's key: everything that determines an answer, decided in one function.

`answer_key` is where the optimizer gets every key. It holds the tenant, the agent (its name,
system prompt and tools), the model, the normalized question, a digest of the conversation so
far, and whatever the agent's tools declare they read (`agents.core.Tool.depends_on`): for
DOCUMENTS, whether the caller may read documents at all (`use_rag_agent`) and a digest of
exactly the ones they may read — computed only for such agents, in one query. An answer that
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


def answer_key(req, agent, model: str, history: list[dict], tenant: str) -> AnswerKey | None:
    """The key of this request's answer, or None when the answer must not be cached.

    tenant: the organization for good (id + creation time: ids can be reused).
    """
    inputs = agent.depends_on
    if inputs is None or not inputs <= KEYABLE or not _cacheable(req, history):
        return None
    documents, readable = _documents(req.user, req.api_key) if DOCUMENTS in inputs else ("-", None)
    value = cache_key(req.query, agent=_identity(agent), model=model, organization=tenant,
                      history=_digest([history, req.messages]), documents=documents)
    return AnswerKey(value, readable)


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

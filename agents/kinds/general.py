"""The general agent: the configured language model; without one, a search of the documents.

It needs no permission, so its document search reads the caller's own and shared documents only
with `use_rag_agent` (agents.documents.readable_documents), and Relay's documentation otherwise.

Quality rule (no model judges another here): an empty answer 0.0; a refusal or an answer of
fewer than 20 characters 0.4; with only the local engine, 0.5 when the docs had a relevant
passage and 0.3 when not; a substantive model answer 0.9.
"""

import re

from agents.core import Agent
from agents.kinds.rag import SEARCH_DOCUMENTS, _quote
from agents.registry import register

_REFUSAL = re.compile(r"\b(I can(?:no|')t|I am unable|I'm unable|I won't|as an AI)\b", re.IGNORECASE)
NO_MODEL = ("No language model is configured for Relay (set RELAY_LLM_BASE_URL or add a model endpoint in the "
            "admin), so I can only answer from Relay's documentation.")


@register
class GeneralAgent(Agent):
    name = "general"
    title = "General"
    description = "General chat with the configured language model; Relay's docs without one."
    tools = [SEARCH_DOCUMENTS]
    system_prompt = "You are Relay's general assistant. Be concise and accurate."

    async def answer_locally(self, ctx):
        yield NO_MODEL
        async for event in ctx.use(SEARCH_DOCUMENTS, {"query": ctx.query}):
            yield event
        passages = [p for p in ctx.facts.get("passages", [])]
        if passages:
            yield f"\n\nFrom **{passages[0].document_title}**:\n\n{_quote(passages[0].text)}"
        else:
            yield "\n\nThe documentation has nothing on that."

    def quality(self, ctx, answer):
        text = answer.strip()
        if not text:
            return 0.0
        if text.startswith(NO_MODEL):
            return 0.5 if ctx.facts.get("passages") else 0.3
        if len(text) < 20 or _REFUSAL.search(text[:200]):
            return 0.4
        return 0.9

"""The general agent: the configured language model; without one, a search of the documents.

It needs no permission, so its document search reads the caller's own and shared documents only
with `use_rag_agent` (agents.documents.readable_documents), and Relay's documentation otherwise.
Without a model, a greeting or thanks gets a greeting back and what the caller can do here (not a
documentation search), and a question that reads as math is pointed at the math agent.

Quality rule (no model judges another here): an empty answer 0.0; a refusal or an answer of
fewer than 20 characters 0.4; with only the local engine, 0.8 for a greeting answered, 0.5 when
the docs had a relevant passage and 0.3 when not; a substantive model answer 0.9.
"""

import re

from agents.core import PER_CALLER, Agent
from agents.kinds.rag import SEARCH_DOCUMENTS, _quote
from agents.registry import all_agents, may_use, register
from relay.eventloop.db import db

_REFUSAL = re.compile(r"\b(I can(?:no|')t|I am unable|I'm unable|I won't|as an AI)\b", re.IGNORECASE)
NO_MODEL = ("No language model is configured for Relay (set RELAY_LLM_BASE_URL or add a model endpoint in the "
            "admin), so I can only answer from Relay's documentation.")
_HELLO = (r"hi|hello|hey|hiya|howdy|yo|greetings|good\s+(?:morning|afternoon|evening|day)|morning|evening|"
          r"bonjour|hola|hallo|salut")
_THANKS = r"thanks|thank\s+you|thx|ty|cheers|much\s+appreciated"
_BYE = r"bye|goodbye|good\s+bye|see\s+you|see\s+ya|good\s+night"
_TAIL = (r"there|relay|all|everyone|friend|again|so\s+much|a\s+lot|very\s+much|for\s+(?:the|your)\s+help|"
         r"how\s+are\s+you(?:\s+doing)?(?:\s+today)?|what\s+can\s+you\s+do|later|soon")
_GREETING = re.compile(rf"^\s*(?P<kind>{_HELLO}|{_THANKS}|{_BYE})(?:[\s,!.?]+(?:{_TAIL}))*[\s,!.?:)(]*$",
                       re.IGNORECASE)
_OPENERS = {"thanks": "You're welcome!", "bye": "Goodbye, and come back any time!", "hello": "Hello!"}


def greeting(text: str) -> str | None:
    """'hello', 'thanks', 'bye' (and their usual variants), or None when the text is not only a greeting."""
    if len(text) > 80 or not (m := _GREETING.match(text)):
        return None
    word = m.group("kind").lower()
    if re.fullmatch(_THANKS, word, re.IGNORECASE):
        return "thanks"
    return "bye" if re.fullmatch(_BYE, word, re.IGNORECASE) else "hello"


def _offer(ctx) -> str:
    """What the caller can do here without a model: the agents they may use, with an example each."""
    lines = [f"- **{agent.title}**: {agent.without_model} Try `{agent.examples[0].splitlines()[0]}`."
             for agent in all_agents().values()
             if agent.name != "general" and agent.examples and may_use(ctx.user, ctx.api_key, agent.name)]
    own = ("I'm Relay's general assistant. No language model is configured yet, so I answer questions about "
           "Relay from its documentation (ask me how budgets or API keys work).")
    return own + ("\n\nThese agents work without a model:\n\n" + "\n".join(lines) if lines else "")


def _looks_like_math(text: str) -> bool:
    from agents.tools.math_query import parse_query

    if not re.search(r"[\d^=+*/%]", text):
        return False
    try:
        parse_query(text)
    except Exception:  # any failure means "not math I can read", never an error for the caller
        return False
    return True


@register
class GeneralAgent(Agent):
    name = "general"
    title = "General"
    description = "General chat with the configured language model; Relay's docs without one."
    tools = [SEARCH_DOCUMENTS]
    system_prompt = "You are Relay's general assistant. Be concise and accurate."
    examples = ["Hello!", "How do budgets work?", "How do I create an API key?"]
    without_model = "Answers from Relay's documentation; open conversation needs a configured model."

    async def answer_locally(self, ctx):
        if kind := greeting(ctx.query):
            ctx.facts["greeting"], ctx.facts[PER_CALLER] = kind, True
            yield f"{_OPENERS[kind]} {await db(_offer)(ctx)}"  # permissions may need the database
            return
        yield NO_MODEL
        if _looks_like_math(ctx.query):
            # Pointed at the math agent or not by the caller's permission: either answer is theirs alone,
            # or a caller without it would fill the cache for one with it (and the reverse).
            ctx.facts[PER_CALLER] = True
            if await db(may_use)(ctx.user, ctx.api_key, "math"):
                yield "\n\nThat looks like math: the **Math** agent answers it exactly, with steps, without a model."
                return
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
        if ctx.facts.get("greeting") and not text.startswith(NO_MODEL):
            return 0.8
        if text.startswith(NO_MODEL):
            return 0.5 if ctx.facts.get("passages") else 0.3
        if len(text) < 20 or _REFUSAL.search(text[:200]):
            return 0.4
        return 0.9

"""The RAG agent: answers from the documents the caller may see, quoting and citing passages.

Quality rule: 1.0 when the answer cites at least one retrieved passage, 0.3 when nothing
relevant was found (the agent says so rather than guessing).
"""

from agents.core import DOCUMENTS, Agent, RunContext, Tool, ToolOutcome
from agents.documents import search
from agents.registry import register
from agents.snippets import snippet
from relay.eventloop.db import db

SNIPPET_CHARS = 300  # the preview a citation chip shows in the browser


def format_passages(passages) -> str:
    return "\n\n".join(
        f"[{n}] {p.document_title} (document {p.document_id}, part {p.chunk_index + 1}):\n{p.text}"
        for n, p in enumerate(passages, 1)
    )


async def _search(arguments: dict, ctx: RunContext) -> ToolOutcome:
    query = str(arguments.get("query", ""))[:2000]
    passages = await db(search)(ctx.user, query, api_key=ctx.api_key)
    ctx.facts.setdefault("passages", []).extend(passages)
    if not passages:
        return ToolOutcome(output="No passage matched.", data={"passages": []})
    return ToolOutcome(
        output=format_passages(passages),
        data={"passages": [{"document_id": p.document_id, "title": p.document_title, "chunk": p.chunk_index,
                            "snippet": snippet(p.text, SNIPPET_CHARS)} for p in passages]},
    )


SEARCH_DOCUMENTS = Tool(
    name="search_documents",
    description="Full-text search over the documents the user may read (their uploads, shared documents and "
                "Relay's own docs). Returns numbered passages to quote and cite as [n].",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    call=_search,
    depends_on=frozenset({DOCUMENTS}),
    shows_data=True,
)


def _quote(text: str, limit: int = 600) -> str:
    """A passage as a Markdown quote: clean text (no table or heading syntax), cut at a word."""
    return "> " + snippet(text, limit)


@register
class RagAgent(Agent):
    name = "rag"
    title = "Documents (RAG)"
    description = "Answers from your documents, quoting and citing the passages it used."
    tools = [SEARCH_DOCUMENTS]
    examples = ["How do budgets work?", "How do I run Relay with PostgreSQL?", "What does the audit log record?"]
    without_model = "Quotes and cites the passages of your documents that answer the question; a model summarises."
    system_prompt = ("You are Relay's document agent. Search the documents with search_documents, answer only "
                     "from the passages, quote them and cite them as [n].")

    async def answer_locally(self, ctx):
        async for event in ctx.use(SEARCH_DOCUMENTS, {"query": ctx.query}):
            yield event
        passages = ctx.facts.get("passages", [])
        if not passages:
            yield ("I found nothing about that in the documents you can read. Upload a document or ask "
                   "someone to share theirs with you.")
            return
        best = passages[0]
        yield f"According to **{best.document_title}** [1]:\n\n{_quote(best.text)}\n"
        if len(passages) > 1:
            yield "\nRelated passages:\n"
            for n, passage in enumerate(passages[1:3], 2):
                yield f"\n[{n}] **{passage.document_title}**: {_quote(passage.text, 240)[2:]}\n"
        yield "\nSources: " + "; ".join(
            f"[{n}] {p.document_title} (part {p.chunk_index + 1})" for n, p in enumerate(passages[:3], 1)
        )

    def quality(self, ctx, answer):
        return 1.0 if ctx.facts.get("passages") and "[1]" in answer else 0.3

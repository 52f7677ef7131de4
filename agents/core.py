"""What an agent is, what a tool is, and the context one run carries.

An agent answers with the embedded local engine by yielding tool_call events (through
`RunContext.use`) and plain strings of answer text; the runner turns text into token events,
prices them and stores the run. With an upstream model, the same tools are offered to the model
through function calling (agents/upstream.py).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents import events
from agents.tokenizer import count_tool_tokens
from relay.observability import metrics


@dataclass
class ToolOutcome:
    output: str                 # what the user (and a model) is shown
    data: dict = field(default_factory=dict)
    ok: bool = True


# What a tool's output depends on besides its arguments (`Tool.depends_on`), so that the response
# cache can key answers by it (agents/optimizer/keys.py). NOTHING_ELSE: the arguments only.
NOTHING_ELSE: frozenset[str] = frozenset()
DOCUMENTS = "documents"    # the documents the caller may read (agents.documents.readable_documents)
ATTACHMENT = "attachment"  # the request's attachment (no cache key holds one)
# A run that sets ctx.facts[PER_CALLER] wrote an answer shaped by who asked (their permissions),
# which no cache key holds: it is not stored (agents/optimizer).
PER_CALLER = "per_caller"


@dataclass
class Tool:
    """A capability an agent offers; `parameters` is its JSON schema for function calling.

    depends_on: what the output depends on besides the arguments (the names above). None, the
    default, means undeclared: an agent offering the tool is never answered from the cache, so
    a new tool cannot leak through it by forgetting to say what it reads. A DOCUMENTS tool puts
    the `Passage`s it returned in `ctx.facts["passages"]`.
    """

    name: str
    description: str
    parameters: dict
    call: Callable[[dict, RunContext], Awaitable[ToolOutcome]]
    depends_on: frozenset[str] | None = None
    # Whether the outcome's `data` goes to the browser (the tool_call event and the stored
    # tool_calls): search_documents' passages, which the chat shows as citation chips.
    shows_data: bool = False

    def spec(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


class ToolFailed(Exception):
    """A tool could not do its job; the message is safe to show."""


@dataclass
class RunContext:
    query: str
    user: Any
    api_key: Any = None
    history: list[dict] = field(default_factory=list)      # earlier turns, OpenAI chat format
    attachment: bytes | None = None                          # an image for the vision agent
    raw_messages: list[dict] | None = None                   # OpenAI-compatible API: sent upstream verbatim
    client_tools: list[dict] | None = None                   # OpenAI-compatible API: tools the client runs
    tool_records: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)               # what the agent learned, for quality scoring
    heavy_lease: Any = None                                  # the run's admitted slot (agents/heavy.py), if any
    last_outcome: ToolOutcome | None = None

    async def use(self, tool: Tool, arguments: dict, call_id: str | None = None) -> AsyncIterator[dict]:
        """Run a tool, yielding its running and done/error events; the outcome lands in last_outcome."""
        call_id = call_id or f"call_{uuid.uuid4().hex[:12]}"
        yield events.tool_call(call_id, tool.name, "running", input=arguments)
        started = time.monotonic()
        try:
            outcome = await tool.call(arguments, self)
        except ToolFailed as failure:
            outcome = ToolOutcome(output=str(failure), ok=False)
        except Exception:
            metrics.record_tool_call(tool.name, False, time.monotonic() - started)
            raise
        metrics.record_tool_call(tool.name, outcome.ok, time.monotonic() - started)
        duration_ms = int((time.monotonic() - started) * 1000)
        self.last_outcome = outcome
        self.tool_records.append({"call_id": call_id, "name": tool.name, "input": arguments,
                                  "output": outcome.output[:2000], "ok": outcome.ok, "duration_ms": duration_ms,
                                  **({"data": outcome.data} if tool.shows_data else {})})
        status = "done" if outcome.ok else "error"
        yield events.tool_call(call_id, tool.name, status, output=outcome.output[:4000], duration_ms=duration_ms,
                               data=outcome.data if tool.shows_data else None)


class Agent:
    """Base class: subclasses set the attributes and implement answer_locally and quality."""

    name: str = ""
    title: str = ""
    description: str = ""
    tools: list[Tool] = []
    system_prompt: str = "You are a helpful assistant."
    needs_attachment: bool = False
    # For a new chat's empty state (GET /api/v1/agents/): prompts the embedded engine answers,
    # and in a sentence what the agent does with no language model configured.
    examples: list[str] = []
    without_model: str = ""

    @functools.cached_property
    def tool_specs(self) -> list[dict]:
        """Its tools as function-calling definitions, sent beside the messages to a model that takes tools."""
        return [tool.spec() for tool in self.tools]

    @functools.cached_property
    def tool_tokens(self) -> int:
        """What those definitions weigh in a prompt: an upstream bills them as input, every call."""
        return count_tool_tokens(self.tool_specs)

    @property
    def depends_on(self) -> frozenset[str] | None:
        """What its answers depend on besides the question: its tools' declarations; None if one has none."""
        declared = [tool.depends_on for tool in self.tools]
        if any(inputs is None for inputs in declared):
            return None
        return NOTHING_ELSE.union(*declared)

    async def answer_locally(self, ctx: RunContext) -> AsyncIterator[dict | str]:
        """Yield tool_call events and strings of answer text (the embedded engine)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def quality(self, ctx: RunContext, answer: str) -> float:
        """A score in [0, 1] by this agent's documented rule."""
        raise NotImplementedError

    def runs_heavy_work(self, query: str, attachment: bytes | None) -> bool:
        """Whether answering will certainly run heavy work (code, image analysis): then the run is
        admitted against the heavy-work slots before it starts (agents/heavy.py), so a refusal is a 429."""
        return False

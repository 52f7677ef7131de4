"""What a model provider is: something that streams a chat completion as provider events.

Providers know nothing of Relay's users, budgets or storage; the agent run (agents/runner)
turns provider events into protocol events (agents/events.py), charges them and stores them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ChatRequest:
    messages: list[dict]                 # OpenAI chat format: {"role", "content", ...}
    model: str                           # the upstream model id
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict] | None = None      # OpenAI function-calling tool specs
    extra: dict = field(default_factory=dict)


@dataclass
class TextDelta:
    """Answer text; `tokens` is how many output tokens it counts for (a stream's chunk: one)."""

    text: str
    tokens: int = 1


@dataclass
class ToolCallDelta:
    """A piece of a tool call the model is writing (a streamed chunk of its name or arguments).

    Output the upstream produced, one token a chunk like a TextDelta; the call itself comes as a
    ToolCallRequest once complete. Yielded so that the router sees the upstream answering (its
    first-token wait ends, a long call is not taken for a dead deployment) and the run can bill
    what was streamed when the call is cut short.
    """

    tokens: int = 1


@dataclass
class ToolCallRequest:
    """The model asks for a tool; arguments is the raw JSON string the model produced."""
    call_id: str
    name: str
    arguments: str


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass
class Finish:
    reason: str  # "stop", "length", "tool_calls", ...


ProviderEvent = TextDelta | ToolCallDelta | ToolCallRequest | Usage | Finish


class ProviderError(Exception):
    """An upstream failure, already mapped to Relay's error codes.

    status is the HTTP status Relay answers with (502 upstream_error, 504 upstream_timeout,
    429 rate_limited, 400 bad_request for an upstream 400, ...).
    """

    def __init__(self, code: str, message: str, status: int = 502, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after: float | None = None  # seconds the upstream asked us to wait (429/503 Retry-After)


class UpstreamBusy(ProviderError):
    """This process already has as many requests open to the upstream as it may (its connection
    pool is full) and none ended in time: this instance is busy, the deployment is not at fault,
    so the router counts it against nobody and another deployment may still answer."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__("service_unavailable", message, 503, retryable=True)
        self.retry_after = retry_after


class Provider(Protocol):
    name: str
    reports_connection: bool  # whether stream() calls on_connection (below)

    def stream(self, request: ChatRequest, *,
               on_connection: Callable[[], None] | None = None) -> AsyncIterator[ProviderEvent]:
        """Yield events; cancelling the consuming task must abort the upstream call at once.

        A provider with `reports_connection = True` calls on_connection() once the call holds one of
        this instance's connections to the upstream, before anything is sent: what came before it was a
        wait for this instance. The router starts the first-token timeout there, and gives the
        deployment's minute its count back for a call ended before it (agents.router.calls). A provider
        without it is timed, and counted, from the call's start."""
        ...

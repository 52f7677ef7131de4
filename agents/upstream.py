"""An agent answering through an upstream language model, its tools offered by function calling.

Yields what the runner consumes: tool_call event dicts (while tools run) and provider
TextDelta objects (one per upstream chunk, each counted as one output token). Upstream usage
is summed over the rounds into ctx.facts["upstream_usage"]. Each round after the first sends the
whole conversation again: it is counted and reserved before it is sent (agents.rounds.Rounds).
"""

from __future__ import annotations

import json
from contextlib import aclosing

from agents.core import Agent, RunContext
from agents.providers.base import ChatRequest, Finish, TextDelta, ToolCallDelta, ToolCallRequest, Usage
from agents.providers.catalog import ModelChoice
from agents.rounds import BudgetStop
from agents.router import calls as router_calls
from agents.tokenizer import count_message_tokens, count_tokens, count_tool_tokens

MAX_TOOL_ROUNDS = 4


def build_messages(agent: Agent, ctx: RunContext) -> list[dict]:
    if ctx.raw_messages is not None:  # the OpenAI-compatible API: the client's conversation, verbatim
        return ctx.raw_messages
    return [{"role": "system", "content": agent.system_prompt}, *ctx.history, {"role": "user", "content": ctx.query}]


def offered_tools(agent: Agent, ctx: RunContext, choice: ModelChoice) -> list[dict] | None:
    """The tool definitions each call of a run sends beside its messages: the client's own (/v1),
    else the agent's when the model takes tools (the embedded engine runs them itself)."""
    if ctx.client_tools:
        return ctx.client_tools
    return (agent.tool_specs or None) if choice.supports_tools and not choice.is_local else None


def first_input_tokens(agent: Agent, ctx: RunContext, choice: ModelChoice) -> int:
    """The first call's prompt as the upstream bills it, its messages and the tools offered beside them:
    what the run's reservation and the key's tokens per minute count before the model is asked."""
    if ctx.client_tools:
        tools = count_tool_tokens(ctx.client_tools)
    else:
        tools = agent.tool_tokens if offered_tools(agent, ctx, choice) else 0
    return count_message_tokens(build_messages(agent, ctx)) + tools


async def answer_with_model(agent: Agent, ctx: RunContext, choice: ModelChoice, max_tokens: int,
                            temperature: float | None = None, *, input_tokens: int = 0, rounds=None, ahead=None):
    """The model's answer through its deployments (agents.router.calls: one call per tool round).

    Raises ModelUnavailable when a round cannot start on any deployment; input_tokens is the first
    prompt's size, counted against the deployments' tokens-per-minute limits (a later round's is
    counted here). `rounds` (agents.rounds.Rounds) sets each round's max_tokens, bills the calls a
    round wrote before any is handed over or run, and admits and reserves each later round before
    it is sent; an exception from it ends the answer there. `ahead` (agents.router.Ahead): the first
    call's deployment, already acquired.
    """
    messages = list(build_messages(agent, ctx))
    tools = {tool.name: tool for tool in agent.tools} if choice.supports_tools and not ctx.client_tools else {}
    offered = offered_tools(agent, ctx, choice)
    usage = ctx.facts.setdefault("upstream_usage", {"input_tokens": 0, "output_tokens": 0, "reported": False})
    calls: list[ToolCallRequest] = []  # the round before's
    for round_number in range(MAX_TOOL_ROUNDS + 1):
        if round_number:
            input_tokens = count_message_tokens(messages) + count_tool_tokens(offered)
            if rounds is not None:
                await rounds.before(input_tokens)
        request = ChatRequest(messages=messages, model=choice.name,
                              max_tokens=rounds.max_tokens() if rounds is not None else max_tokens,
                              temperature=temperature, tools=offered)
        calls, ctx.facts["finish_reason"] = [], None
        streamed = 0  # chunks of tool calls still being written: billed if the round ends before they complete
        try:
            first, ahead = ahead, None
            async with aclosing(router_calls.stream(choice, request, tokens=input_tokens, ahead=first)) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        if event.text:
                            yield event
                    elif isinstance(event, ToolCallDelta):
                        streamed += event.tokens
                    elif isinstance(event, ToolCallRequest):
                        calls.append(event)
                    elif isinstance(event, Finish):
                        ctx.facts["finish_reason"] = event.reason
                    elif isinstance(event, Usage):
                        usage["input_tokens"] += event.input_tokens
                        usage["output_tokens"] += event.output_tokens
                        usage["reported"] = True
        except BaseException:  # cut (a failure, a timeout, the client gone): what was streamed was written
            if rounds is not None and streamed:
                rounds.calls_cut_short(streamed)
            raise
        if rounds is not None and not calls and rounds.text_cut_by_budget(ctx.facts["finish_reason"]):
            raise BudgetStop()
        if not calls:
            return
        if rounds is not None:  # billed now: the client may leave while a tool runs, or run the calls itself
            rounds.calls_written(sum(count_tokens(c.name) + count_tokens(c.arguments) for c in calls),
                                 ctx.facts["finish_reason"])
        if ctx.client_tools:  # the client's own tools: hand the calls back, the client runs them
            for call in calls:
                yield call
            return
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]})
        for call in calls:
            async for event in _run_call(ctx, tools, call):
                yield event
            messages.append({"role": "tool", "tool_call_id": call.call_id, "content": ctx.last_outcome.output})


async def _run_call(ctx: RunContext, tools: dict, call: ToolCallRequest):
    from agents import events
    from agents.core import ToolOutcome

    tool = tools.get(call.name)
    try:
        arguments = json.loads(call.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as error:
        arguments, problem = None, f"The tool arguments were not valid JSON: {error}"
    else:
        problem = None if tool else f"There is no tool named {call.name!r}."
    if problem:
        ctx.last_outcome = ToolOutcome(output=problem, ok=False)
        ctx.tool_records.append({"call_id": call.call_id, "name": call.name, "input": call.arguments[:500],
                                 "output": problem, "ok": False, "duration_ms": 0})
        yield events.tool_call(call.call_id, call.name, "error", output=problem, duration_ms=0)
        return
    async for event in ctx.use(tool, arguments, call_id=call.call_id):
        yield event

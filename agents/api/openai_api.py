"""The OpenAI-compatible API: POST /v1/chat/completions and GET /v1/models.

The official `openai` SDK pointed at Relay works unchanged. `model` is either an upstream or
local model (the client's messages go to it as they are, `tools` passed through), or
`relay-<agent>` to run one of Relay's agents. Errors use OpenAI's error format.

An agent runs its own tools, so client tools sent to `relay-<agent>` are refused (400
`unsupported_parameter`) rather than ignored. Images come as `image_url` data URLs
(agents.api.openai_images): the vision agent gets one as its attachment, a model gets them all once
each is checked as the agent's is; such requests may be as large as an upload
(RELAY_MAX_UPLOAD_BYTES), every other one keeps the JSON limit.
"""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers

from accounts import key_tree
from accounts.permissions import AUTHENTICATED, request_key
from agents import runner
from agents.api import openai_images, sse
from agents.api.serializers import MAX_QUERY_CHARS, clean_text, content_problem, forwarded_message
from agents.idempotency import prepare_once, presented
from agents.providers.catalog import available_models
from agents.registry import all_agents
from billing.ratelimit import quota_headers
from relay.api.async_views import api_endpoint, read_json
from relay.api.errors import PayloadTooLarge
from relay.api.serializers import SharedFieldsMixin, StrictCharField
from relay.eventloop.db import db

AGENT_PREFIX = "relay-"
# Fields that hand the model the client's own tools (`functions`/`function_call`: their older names).
CLIENT_TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call")


class UnsupportedParameter(exceptions.ValidationError):
    default_code = "unsupported_parameter"


class RunFailed(exceptions.APIException):
    """A whole (non-streamed) answer that failed: an HTTP error, as OpenAI's API gives, not a 200 with no content."""

    STATUS = {"rate_limited": 429, "upstream_timeout": 504, "run_timeout": 504, "agent_error": 500,
              "service_unavailable": 503}

    def __init__(self, code: str, message: str):
        self.status_code = self.STATUS.get(code, 502)  # the upstream's failures: a bad gateway
        self.default_code = code  # what the error envelope names
        # This instance was busy (agents.providers.base.UpstreamBusy): the error handler sends Retry-After.
        self.wait = 1 if code == "service_unavailable" else None
        super().__init__(detail=message, code=code)


class ChatCompletionSerializer(SharedFieldsMixin, serializers.Serializer):
    """OpenAI's request body; fields Relay does not use (top_p, seed, ...) are accepted and ignored."""

    model = StrictCharField(max_length=100)
    messages = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=500)
    stream = serializers.BooleanField(required=False, default=False)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=32768)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=32768)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    stream_options = serializers.DictField(required=False, allow_null=True)
    tools = serializers.ListField(child=serializers.DictField(), required=False, allow_null=True, max_length=128)
    n = serializers.IntegerField(required=False, min_value=1, max_value=1)

    def validate_messages(self, messages):
        for index, message in enumerate(messages):
            if message.get("role") not in ("system", "user", "assistant", "tool", "developer"):
                raise serializers.ValidationError("Each message needs a role: system, user, assistant or tool.")
            if problem := content_problem(message.get("content")):
                raise serializers.ValidationError(f"The content of message {index} {problem}.")
        if not any(m["role"] == "user" for m in messages):
            raise serializers.ValidationError("At least one user message is needed.")
        if openai_images.text_size(messages) > 4 * MAX_QUERY_CHARS:
            raise serializers.ValidationError("The conversation is too long.")
        return messages

    def validate_tools(self, tools):
        # Sent to the model with every tool round: bounded like the conversation, not only by the body limit.
        if tools and len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False, default=str)) > 4 * MAX_QUERY_CHARS:
            raise serializers.ValidationError("The tool definitions are too long.")
        return tools


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def agent_of(model: str) -> str | None:
    """The agent a `relay-<agent>` model name runs, or None for an upstream or local model."""
    agent = model[len(AGENT_PREFIX):] if model.startswith(AGENT_PREFIX) else None
    return agent if agent in all_agents() else None


def _refuse_client_tools(model: str, body: dict) -> None:
    sent = [name for name in CLIENT_TOOL_FIELDS if body.get(name) not in (None, [], {})]
    if sent:
        raise UnsupportedParameter({name: [f"{model} runs Relay's own tools and does not take client tools; "
                                           f"use a model name (GET /v1/models) to pass tools to a model."]
                                    for name in sent})


def _bounded_body(request, messages: list[dict]) -> None:
    """Only images get the upload limit (api_endpoint(upload_sized=True)): the rest of the body,
    past the JSON limit, is 413 as on every other endpoint."""
    limit = settings.RELAY_MAX_BODY_BYTES
    rest = int(request.META.get("CONTENT_LENGTH") or 0) - openai_images.inline_bytes(messages)
    if rest > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes; only images may make it larger.")


def _attachment(agent: str, messages: list[dict]) -> bytes | None:
    if not openai_images.image_parts(messages):
        return None
    if agent != "vision":
        raise exceptions.ValidationError({"messages": [f"{AGENT_PREFIX}{agent} does not take images; "
                                                       f"send them to {AGENT_PREFIX}vision."]})
    return openai_images.attachment(messages)


def _run_request(drf_request, data: dict, image: bytes | None = None) -> runner.RunRequest:
    name = data["model"]
    if agent := agent_of(name):
        model, raw = None, None
    else:  # an upstream or local model: runner.prepare answers 404 if none has this name
        agent, model, raw = "general", name, [forwarded_message(m) for m in data["messages"]]
    query = clean_text(text_of(next(m for m in reversed(data["messages"]) if m["role"] == "user").get("content")))
    if not query.strip() and image is not None:
        query = "Describe this image."  # as /api/v1/vision/analyze without a question
    if not query.strip():
        raise exceptions.ValidationError({"messages": ["The last user message is empty."]})
    history = [{"role": m["role"], "content": text_of(m.get("content"))} for m in data["messages"][:-1]
               if m["role"] in ("user", "assistant")]
    body = {"agent_type": agent, "query": query[:MAX_QUERY_CHARS], "model": model, "temperature": data.get("temperature"),
            "max_tokens": data.get("max_completion_tokens") or data.get("max_tokens"), "image": image}
    return runner.new_request(drf_request.user, request_key(drf_request), body,
                              client_request_id=getattr(drf_request._request, "request_id", ""),
                              messages=raw, client_tools=data.get("tools") or None, history=history)


def _openai_error(response: JsonResponse) -> JsonResponse:
    """Relay's envelope, reshaped as OpenAI's {"error": {"message", "type", "param", "code"}}."""
    error = json.loads(response.content)["error"]
    kind = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
            402: "insufficient_quota", 429: "rate_limit_error"}.get(response.status_code, "invalid_request_error")
    if response.status_code >= 500:
        kind = "server_error"
    param = next(iter(error.get("fields", {}) or {}), None)
    reshaped = JsonResponse({"error": {"message": error["message"], "type": kind, "param": param,
                                       "code": error["code"]}}, status=response.status_code)
    for header in ("Retry-After", "WWW-Authenticate"):
        if response.has_header(header):
            reshaped[header] = response[header]
    return reshaped


class _OpenAIFraming:
    """OpenAI's chunks (agents.api.sse): the assistant's role first, `data: [DONE]` last."""

    closing = b"data: [DONE]\n\n"

    def __init__(self, run: runner.PreparedRun, model: str, include_usage: bool):
        self.run, self.model, self.include_usage = run, model, include_usage
        self.id = f"chatcmpl-{run.request.run_id}"
        self.created = int(time.time())
        self.tool_calls, self.usage = 0, None
        self.opening = self.chunk({"role": "assistant", "content": ""})

    def chunk(self, delta: dict | None, finish_reason=None, **extra) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": _answered_by(self.run, self.model),
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra}
        return sse.data(body)

    def frame(self, event: dict) -> bytes:
        kind = event["type"]
        if kind == "token":
            return self.chunk({"content": event["content"]})
        if kind == "client_tool_call":
            self.tool_calls += 1
            return self.chunk({"tool_calls": [{"index": self.tool_calls - 1, "id": event["call_id"], "type": "function",
                                               "function": {"name": event["name"], "arguments": event["arguments"]}}]})
        if kind == "error":
            kind = "server_error" if event["code"] != "budget_exceeded" else "insufficient_quota"
            return sse.data({"error": {"message": event["message"], "type": kind, "param": None,
                                       "code": event["code"]}})
        if kind == "usage":
            self.usage = {"prompt_tokens": event["input_tokens"], "completion_tokens": event["output_tokens"],
                          "total_tokens": event["input_tokens"] + event["output_tokens"]}
        elif kind == "done":
            finish = self.chunk({}, _finish_reason(self.run, event["status"], self.tool_calls))
            return finish + self.chunk(None, usage=self.usage) if self.include_usage else finish
        return b""


def _answered_by(run, asked: str) -> str:
    """The model asked for (or the relay-<agent> alias), unless a fallback model answered instead."""
    return run.model.name if run.fallbacks else asked


def _finish_reason(run, status: str, tool_calls: int) -> str:
    if tool_calls:
        return "tool_calls"
    if status == "budget_stop" or run.ctx.facts.get("finish_reason") == "length":
        return "length"
    return "stop"


async def _whole(run: runner.PreparedRun, model: str) -> dict:
    answer, calls, status, usage, error = [], [], "complete", {}, None
    async for event in runner.stream(run):
        if event["type"] == "token":
            answer.append(event["content"])
        elif event["type"] == "client_tool_call":
            calls.append({"id": event["call_id"], "type": "function",
                          "function": {"name": event["name"], "arguments": event["arguments"]}})
        elif event["type"] == "usage":
            usage = {"prompt_tokens": event["input_tokens"], "completion_tokens": event["output_tokens"],
                     "total_tokens": event["input_tokens"] + event["output_tokens"]}
        elif event["type"] == "error":
            error = error or event
        elif event["type"] == "done":
            status = event["status"]
    if status == "error" and error is not None:  # the run is stored and billed as it went; the client is told
        raise RunFailed(error["code"], error["message"])
    message = {"role": "assistant", "content": "".join(answer) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{run.request.run_id}", "object": "chat.completion", "created": int(time.time()),
            "model": _answered_by(run, model), "choices": [{"index": 0, "message": message,
                                         "finish_reason": _finish_reason(run, status, len(calls))}],
            "usage": usage}


def _admitted_body(request, drf_request) -> tuple[dict, dict, runner.RunRequest]:
    """The body checked and the run's reads done, where the request was admitted (the
    api_endpoint prelude): sync, reads only."""
    body = read_json(drf_request)
    serializer = ChatCompletionSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    _bounded_body(request, data["messages"])
    image = None
    if agent := agent_of(data["model"]):
        _refuse_client_tools(data["model"], body)
        image = _attachment(agent, data["messages"])
    else:  # the parts go to the model as they came: refused here, not by whatever the upstream does with them
        openai_images.check_all(data["messages"])
    run_request = _run_request(drf_request, data, image)
    if presented(request) is None:  # a replayed Idempotency-Key reads nothing of its run again
        runner.read_ahead(run_request)
    return body, data, run_request


@api_endpoint(AUTHENTICATED, error_adapter=_openai_error, upload_sized=True, prelude=_admitted_body, schema={
    "request": ChatCompletionSerializer, "summary": "OpenAI-compatible chat completions (stream and not)",
    "responses": {200: OpenApiResponse(OpenApiTypes.OBJECT, description="chat.completion, or with stream=true "
                                       "server-sent chat.completion.chunk objects ending with [DONE]")},
})
async def chat_completions(request, drf_request, ready):
    """POST /v1/chat/completions, stream and not."""
    body, data, run_request = ready
    run = await prepare_once(request, "chat_completions", body, run_request)
    if not data["stream"]:
        return quota_headers(JsonResponse(await _whole(run, data["model"])), request, run.remaining_tokens)
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    response = await sse.event_stream(run, _OpenAIFraming(run, data["model"], include_usage))
    return quota_headers(response, request, run.remaining_tokens)


@api_endpoint(AUTHENTICATED, methods=("GET",), throttle=False, error_adapter=_openai_error, schema={
    "request": None, "summary": "OpenAI-compatible model list",
    "responses": {200: OpenApiResponse(OpenApiTypes.OBJECT, description='{"object": "list", "data": [...]}')},
})
async def models(request, drf_request):
    """GET /v1/models: the models and the relay-<agent> aliases this caller may use."""
    names = await db(_model_names)(drf_request.user, request_key(drf_request))
    return JsonResponse({"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": "relay"} for n in names]})


def _model_names(user, key) -> list[str]:
    from agents.registry import may_use

    names = [m.name for m in available_models() if key_tree.permits(key, "allowed_models", m.name)]
    return names + [f"{AGENT_PREFIX}{a}" for a in all_agents() if may_use(user, key, a)]

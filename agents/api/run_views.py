"""The model-call endpoints: async end to end (docs/design.md section 11)."""

from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions

from accounts.permissions import AUTHENTICATED, request_key
from agents import runner
from agents.api import sse
from agents.api.serializers import AnswerSerializer, QuerySerializer, VisionSerializer
from agents.idempotency import prepare_once
from billing.ratelimit import quota_headers
from relay.api.async_views import MULTIPART, api_endpoint, read_json
from relay.eventloop.db import db


def validated(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def run_request(drf_request, data: dict) -> runner.RunRequest:
    return runner.new_request(drf_request.user, request_key(drf_request), data,
                              client_request_id=getattr(drf_request._request, "request_id", ""))


@api_endpoint(AUTHENTICATED, schema={"request": QuerySerializer, "responses": AnswerSerializer,
                                    "summary": "Run an agent and answer with the whole result"})
async def query(request, drf_request):
    """POST /api/v1/query: run an agent and answer with the whole result and its usage."""
    body = read_json(drf_request)
    data = validated(QuerySerializer, body)
    run = await prepare_once(request, "query", body, run_request(drf_request, data))
    return quota_headers(JsonResponse(await runner.collect(run)), request, run.remaining_tokens)


def _vision_input(drf_request) -> dict:
    form = drf_request.data  # parsed at admission by MultiPartParser, whatever the credential
    data = validated(VisionSerializer, form.dict() if hasattr(form, "dict") else dict(form))
    return {"agent_type": "vision", "query": data["question"] or "Describe this image.",
            "conversation_id": data.get("conversation_id"), "image": data["image"].read()}


@api_endpoint("use_vision_agent", parsers=MULTIPART, schema={"request": {"multipart/form-data": VisionSerializer},
                                          "responses": AnswerSerializer, "summary": "Analyse an image"})
async def vision_analyze(request, drf_request):
    """POST /api/v1/vision/analyze: multipart `image` (+ `question`) → the vision agent's analysis."""
    if not request.content_type.startswith("multipart/"):
        raise exceptions.UnsupportedMediaType(request.content_type or "(none)")
    data = await db(_vision_input)(drf_request)
    run = await runner.prepare(run_request(drf_request, data))
    return JsonResponse(await runner.collect(run))


@api_endpoint(AUTHENTICATED, schema={
    "request": QuerySerializer, "summary": "Run an agent, streaming its events (server-sent events)",
    "responses": {(200, "text/event-stream"): OpenApiResponse(
        OpenApiTypes.STR, description="One JSON event per `data:` line: start, token, tool_call, usage, error, done.")},
})
async def stream(request, drf_request):
    """POST /api/v1/stream: the same body as /query, answered as `text/event-stream` (docs/design.md §6).

    Every check runs before the response starts, so refusals are plain 4xx; a client that
    disconnects cancels the run, which is stored as `cancelled` with what was generated.
    """
    body = read_json(drf_request)
    data = validated(QuerySerializer, body)
    run = await prepare_once(request, "stream", body, run_request(drf_request, data))
    return quota_headers(sse.event_stream(run, sse.RelayFraming()), request, run.remaining_tokens)

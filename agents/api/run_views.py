"""The model-call endpoints: async end to end (docs/design.md section 11)."""

from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions

from accounts.permissions import AUTHENTICATED, request_key
from agents import runner
from agents.api import sse
from agents.api.serializers import AnswerSerializer, QuerySerializer, VisionSerializer
from agents.idempotency import prepare_once, presented
from billing.ratelimit import quota_headers
from relay.api.async_views import MULTIPART, api_endpoint, read_json


def validated(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def run_request(drf_request, data: dict) -> runner.RunRequest:
    return runner.new_request(drf_request.user, request_key(drf_request), data,
                              client_request_id=getattr(drf_request._request, "request_id", ""))


def admitted_query(request, drf_request) -> tuple[dict, runner.RunRequest]:
    """The body checked and the run's reads done, where the request was admitted (the
    api_endpoint prelude): sync, reads only."""
    body = read_json(drf_request)
    req = run_request(drf_request, validated(QuerySerializer, body))
    if presented(request) is None:  # a replayed Idempotency-Key reads nothing of its run again
        runner.read_ahead(req)
    return body, req


@api_endpoint(AUTHENTICATED, prelude=admitted_query, schema={
    "request": QuerySerializer, "responses": AnswerSerializer, "summary": "Run an agent and answer with the whole result"})
async def query(request, drf_request, ready):
    """POST /api/v1/query: run an agent and answer with the whole result and its usage."""
    body, req = ready
    run = await prepare_once(request, "query", body, req)
    return quota_headers(JsonResponse(await runner.collect(run)), request, run.remaining_tokens)


def _vision_input(drf_request) -> dict:
    form = drf_request.data  # parsed at admission by MultiPartParser, whatever the credential
    data = validated(VisionSerializer, form.dict() if hasattr(form, "dict") else dict(form))
    return {"agent_type": "vision", "query": data["question"] or "Describe this image.",
            "conversation_id": data.get("conversation_id"), "image": data["image"].read()}


def _admitted_image(request, drf_request) -> runner.RunRequest:
    """The form checked and the run's reads done, on a DB thread (its files are read as it goes): sync, reads only."""
    if not request.content_type.startswith("multipart/"):
        raise exceptions.UnsupportedMediaType(request.content_type or "(none)")
    return runner.read_ahead(run_request(drf_request, _vision_input(drf_request)))


@api_endpoint("use_vision_agent", parsers=MULTIPART, prelude=_admitted_image, schema={
    "request": {"multipart/form-data": VisionSerializer}, "responses": AnswerSerializer, "summary": "Analyse an image"})
async def vision_analyze(request, drf_request, req):
    """POST /api/v1/vision/analyze: multipart `image` (+ `question`) → the vision agent's analysis."""
    run = await runner.prepare(req)
    return JsonResponse(await runner.collect(run))


@api_endpoint(AUTHENTICATED, prelude=admitted_query, schema={
    "request": QuerySerializer, "summary": "Run an agent, streaming its events (server-sent events)",
    "responses": {(200, "text/event-stream"): OpenApiResponse(
        OpenApiTypes.STR, description="One JSON event per `data:` line: start, token, tool_call, usage, error, done.")},
})
async def stream(request, drf_request, ready):
    """POST /api/v1/stream: the same body as /query, answered as `text/event-stream` (docs/design.md §6).

    Every check runs before the response starts, so refusals are plain 4xx; a client that
    disconnects cancels the run, which is stored as `cancelled` with what was generated.
    """
    body, req = ready
    run = await prepare_once(request, "stream", body, req)
    return quota_headers(await sse.event_stream(run, sse.RelayFraming()), request, run.remaining_tokens)

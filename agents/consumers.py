"""WebSocket /ws/chat/: the streaming protocol of docs/design.md section 6 over one socket.

The browser is authenticated by its session; other clients send {"type": "auth", "token"}
first (an API key or a JWT). Then {"type": "query", ...} (the body of /api/v1/stream) runs an
agent, {"type": "cancel"} stops it. Queries for different conversations may run side by side;
each event carries the `conversation_id` it belongs to.

The socket keeps the credential, not the user it found: every query passes the same admission
step as an HTTP request (accounts.admission.admit), so a key revoked, an owner deactivated or a
role lowered on any instance binds the next query, and the key's requests/minute count here
too. A dead credential closes the socket with 4401, a missing permission with 4403; each
refusal is recorded in the audit trail as the HTTP API records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from channels.generic.websocket import AsyncWebsocketConsumer
from rest_framework import exceptions

from accounts.admission import SessionCredential, TokenCredential, admit
from accounts.permissions import AUTHENTICATED
from agents import deadlines, events, runner
from agents.api.serializers import QuerySerializer
from audit import context as audit_context
from relay import versioned_cache
from relay.api.parsers import parse_json
from relay.eventloop.db import db
from relay.observability import metrics

logger = logging.getLogger(__name__)
MAX_FRAME_BYTES = 64 * 1024
MAX_RUNNING = 4
AUTH_TIMEOUT_SECONDS = 10
CLOSE_AUTH_FAILED, CLOSE_FORBIDDEN = 4401, 4403
_CLOSE_CODES = {401: CLOSE_AUTH_FAILED, 403: CLOSE_FORBIDDEN}
PATH = "/ws/chat/"


def _validate_query(message: dict) -> dict:
    serializer = QuerySerializer(data={k: v for k, v in message.items() if k != "type"})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _admitted_query(credential, message: dict, request_id: str):
    """One trip to the DB threads per query: admission, the query's checks and its run's reads, the
    price token read along with the API key (relay.versioned_cache.one_read). Returns (admitted,
    the run's request or the refusal of the query)."""
    with versioned_cache.one_read():
        admitted = admit(credential)
        try:
            data = _validate_query(message)
            request = runner.new_request(admitted.user, admitted.api_key, data, client_request_id=request_id)
            return admitted, runner.read_ahead(request)
        except exceptions.APIException as refused:
            return admitted, refused


def refusal(exc: exceptions.APIException) -> tuple[int, dict]:
    """(status, error) as the HTTP API would answer `exc`; a 401/403 is recorded as the HTTP API records it."""
    from audit.signals import record_refusal
    from relay.api.errors import exception_handler

    response = exception_handler(exc, {"request": None, "view": None})
    error = dict(response.data["error"])
    error.pop("fields", None)
    record_refusal(response.status_code, error["code"], error["message"], method="WEBSOCKET", path=PATH,
                   resource=PATH)
    return response.status_code, error


def _gone_quietly(task: asyncio.Task) -> None:
    """A client that left while being refused is not an error: retrieve the exception so none is logged."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("socket gone while refusing it: %r", task.exception())


class ChatConsumer(AsyncWebsocketConsumer):
    credential = None  # what the client presented, admitted again before every query
    user = None  # whom it authenticated as (the socket's group)
    api_key = None
    auth_deadline = None  # the timer that closes a socket that never authenticates

    async def connect(self):
        self.runs: dict[str, asyncio.Task] = {}
        self.pending = 0
        await self.accept()
        self.session_counted = metrics.session_started()
        self.client_ip = audit_context.current().ip
        session_user = self.scope.get("user")
        if session_user is not None and session_user.is_authenticated:
            await self._signed_in(SessionCredential(self.scope["session"].session_key, self.client_ip),
                                  session_user, None)
        else:
            self.auth_deadline = asyncio.get_running_loop().call_later(AUTH_TIMEOUT_SECONDS, self._auth_timeout)

    def _auth_timeout(self):
        self.auth_deadline = None
        if self.user is None:
            refusal = asyncio.ensure_future(
                self._refuse("not_authenticated", "Send {\"type\": \"auth\"} first.", CLOSE_AUTH_FAILED))
            refusal.add_done_callback(_gone_quietly)

    def _disarm(self):
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
            self.auth_deadline = None

    async def _signed_in(self, credential, user, api_key):
        self._disarm()
        self.credential, self.user, self.api_key = credential, user, api_key
        self.group = f"user-{user.pk}"
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code):
        self._disarm()
        metrics.session_ended(getattr(self, "session_counted", False))
        self.session_counted = False
        for task in list(self.runs.values()):
            task.cancel()
        if self.runs:
            await asyncio.gather(*self.runs.values(), return_exceptions=True)
        if self.user is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def send_event(self, event: dict):
        await self.send(text_data=events.utf8_json(event).decode())

    async def _refuse(self, code: str, message: str, close_code: int):
        await self.send_event({"type": "error", "code": code, "message": message})
        await self.close(code=close_code)

    async def _refused(self, exc: exceptions.APIException, **extra) -> None:
        """Answer a refusal as an error event; a dead credential or a missing permission also closes."""
        status, error = await db(refusal)(exc)
        await self.send_event({"type": "error", **error, **extra})
        if status in _CLOSE_CODES:
            await self.close(code=_CLOSE_CODES[status])

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None or len(text_data.encode()) > MAX_FRAME_BYTES:
            await self.send_event({"type": "error", "code": "invalid_frame",
                                   "message": f"Send JSON text frames of at most {MAX_FRAME_BYTES} bytes."})
            return
        try:
            message = parse_json(text_data)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.send_event({"type": "error", "code": "malformed_frame",
                                   "message": "Each frame must be a JSON object with a \"type\"."})
            return
        handler = {"auth": self._on_auth, "query": self._on_query, "cancel": self._on_cancel,
                   "ping": self._on_ping}.get(message["type"])
        if handler is None:
            await self.send_event({"type": "error", "code": "unknown_type",
                                   "message": f"Unknown message type {message['type'][:40]!r}."})
            return
        await handler(message)

    async def _on_ping(self, message):
        await self.send_event({"type": "pong"})

    async def _on_auth(self, message):
        token = message.get("token")
        if not isinstance(token, str) or not token:
            await self._refused(exceptions.NotAuthenticated("The auth message needs a token."))
            return
        credential = TokenCredential(token, self.client_ip)
        try:
            admitted = await db(admit)(credential, AUTHENTICATED, throttle=False)
        except exceptions.APIException as refused:
            await self._refused(refused)
            return
        await self._signed_in(credential, admitted.user, admitted.api_key)
        await self.send_event({"type": "authenticated", "user": admitted.user.get_username()})

    async def _on_query(self, message):
        if self.credential is None:
            await self._refused(exceptions.NotAuthenticated("Authenticate before sending queries."))
            return
        if len(self.runs) + self.pending >= MAX_RUNNING:
            await self.send_event({"type": "error", "code": "too_many_requests",
                                   "message": f"At most {MAX_RUNNING} answers at a time on one connection."})
            return
        conversation = _conversation_key(message.get("conversation_id"))
        if conversation and conversation in self.runs:
            await self._busy(conversation)
            return
        # Each query is audited as its own request: its own id, its own refusal record.
        with audit_context.bind(request_id=audit_context.new_request_id(), denial_recorded=False):
            self.pending += 1
            try:
                run = await self._prepare(message)
            finally:
                self.pending -= 1
            if run is not None and run.conversation_id in self.runs:  # one answer at a time per conversation
                await runner.abandon(run)
                await self._busy(run.conversation_id)
            elif run is not None:
                task = asyncio.ensure_future(self._stream(run))
                self.runs[run.conversation_id] = task
                task.add_done_callback(functools.partial(self._ended, run.conversation_id))

    def _ended(self, conversation: str, task: asyncio.Task) -> None:
        if self.runs.get(conversation) is task:
            del self.runs[conversation]

    async def _busy(self, conversation: str) -> None:
        await self.send_event({"type": "error", "code": "conversation_busy", "conversation_id": conversation,
                               "message": "This conversation is still answering; cancel it or wait."})

    async def _prepare(self, message) -> runner.PreparedRun | None:
        """The same door as HTTP: admission against the credential's current state, then the run's checks."""
        try:
            admitted, request = await db(_admitted_query)(self.credential, message,
                                                          audit_context.current().request_id)
            self.user, self.api_key = admitted.user, admitted.api_key
            if isinstance(request, exceptions.APIException):
                raise request
            return await runner.prepare(request)
        except exceptions.APIException as refused:
            await self._refused(refused)
        return None

    async def _stream(self, run: runner.PreparedRun):
        try:
            # Closed here, not by the garbage collector, when a cancel lands in a send: the run is
            # stored before the `done` below is told.
            stall = deadlines.limits()[1]
            async with contextlib.aclosing(runner.stream(run)) as run_events:
                async for event in run_events:
                    # A client that stopped reading holds the send: its run is closed after `stall`.
                    async with asyncio.timeout(stall):
                        await self.send_event({**event, "conversation_id": run.conversation_id})
        except asyncio.CancelledError:
            if run.outcome is not None:  # stored as cancelled: tell the client what it cost
                status, total_tokens, cost = run.outcome
                await self.send_event({**events.done(status, total_tokens, cost), "conversation_id": run.conversation_id})
            raise
        except Exception:  # a closed socket mid-send: the run was already stored as it ended
            logger.info("websocket stream ended early", exc_info=True)

    async def _on_cancel(self, message):
        conversation = _conversation_key(message.get("conversation_id"))
        targets = [self.runs[conversation]] if conversation in self.runs else (
            [] if conversation else list(self.runs.values()))
        if not targets:
            await self.send_event({"type": "error", "code": "nothing_to_cancel", "message": "Nothing is running."})
            return
        for task in targets:
            task.cancel()
        await asyncio.gather(*targets, return_exceptions=True)


# The query's own field reads the id here too, so every spelling it accepts for one UUID (upper
# case, bare hex, braces, urn:uuid:, a JSON integer) is the one conversation the run is keyed by.
_CONVERSATION_ID = QuerySerializer().fields["conversation_id"]


def _conversation_key(value) -> str:
    """A conversation id as runs are stored under it; anything the query refuses stays as sent."""
    try:
        return str(_CONVERSATION_ID.to_internal_value(value))
    except exceptions.ValidationError:
        return str(value or "")

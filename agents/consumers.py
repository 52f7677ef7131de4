"""WebSocket /ws/chat/: the streaming protocol of DESIGN.md section 6 over one socket.

The browser is authenticated by its session; other clients send {"type": "auth", "token"}
first (an API key or a JWT). Then {"type": "query", ...} (the body of /api/v1/stream) runs an
agent, {"type": "cancel"} stops it. Queries for different conversations may run side by side;
each event carries the `conversation_id` it belongs to. Auth failure closes with 4401,
permission failure with 4403.
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.generic.websocket import AsyncWebsocketConsumer
from rest_framework import exceptions

from agents import runner
from agents.api.serializers import QuerySerializer
from relay.api.parsers import parse_json
from relay.asyncdb import db
from relay.observability import metrics

logger = logging.getLogger(__name__)
MAX_FRAME_BYTES = 64 * 1024
MAX_RUNNING = 4
AUTH_TIMEOUT_SECONDS = 10
CLOSE_AUTH_FAILED, CLOSE_FORBIDDEN = 4401, 4403


def authenticate_token(token: str):
    """(user, api_key) for an API key or a JWT access token; AuthenticationFailed otherwise."""
    from accounts.services import KEY_PREFIX, KeyRejected, authenticate_key

    if token.startswith(KEY_PREFIX):
        try:
            key = authenticate_key(token)
        except KeyRejected as rejected:
            raise exceptions.AuthenticationFailed(rejected.reason) from None
        return key.owner, key
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.exceptions import InvalidToken, TokenError

    auth = JWTAuthentication()
    try:
        return auth.get_user(auth.get_validated_token(token)), None
    except (InvalidToken, TokenError) as error:
        raise exceptions.AuthenticationFailed(str(error)) from None


def _validate_query(message: dict) -> dict:
    serializer = QuerySerializer(data={k: v for k, v in message.items() if k != "type"})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class ChatConsumer(AsyncWebsocketConsumer):
    user = None
    api_key = None

    async def connect(self):
        self.runs: dict[str, asyncio.Task] = {}
        self.pending = 0
        await self.accept()
        self.session_counted = metrics.session_started()
        session_user = self.scope.get("user")
        if session_user is not None and session_user.is_authenticated:
            await self._signed_in(session_user, None)
        else:
            self.auth_deadline = asyncio.get_running_loop().call_later(AUTH_TIMEOUT_SECONDS, self._auth_timeout)

    def _auth_timeout(self):
        if self.user is None:
            asyncio.ensure_future(self._refuse("not_authenticated", "Send {\"type\": \"auth\"} first.",
                                               CLOSE_AUTH_FAILED))

    async def _signed_in(self, user, api_key):
        self.user, self.api_key = user, api_key
        self.group = f"user-{user.pk}"
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code):
        metrics.session_ended(getattr(self, "session_counted", False))
        self.session_counted = False
        for task in list(self.runs.values()):
            task.cancel()
        if self.runs:
            await asyncio.gather(*self.runs.values(), return_exceptions=True)
        if self.user is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def send_event(self, event: dict):
        await self.send(text_data=json.dumps(event, ensure_ascii=False))

    async def _refuse(self, code: str, message: str, close_code: int):
        await self.send_event({"type": "error", "code": code, "message": message})
        await self.close(code=close_code)

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
            await self._refuse("not_authenticated", "The auth message needs a token.", CLOSE_AUTH_FAILED)
            return
        try:
            user, key = await db(authenticate_token)(token)
        except exceptions.AuthenticationFailed as failure:
            await self._refuse("authentication_failed", str(failure.detail), CLOSE_AUTH_FAILED)
            return
        await self._signed_in(user, key)
        await self.send_event({"type": "authenticated", "user": user.get_username()})

    async def _on_query(self, message):
        if self.user is None:
            await self._refuse("not_authenticated", "Authenticate before sending queries.", CLOSE_AUTH_FAILED)
            return
        if len(self.runs) + self.pending >= MAX_RUNNING:
            await self.send_event({"type": "error", "code": "too_many_requests",
                                   "message": f"At most {MAX_RUNNING} answers at a time on one connection."})
            return
        conversation = str(message.get("conversation_id") or "")
        if conversation and conversation in self.runs:
            await self.send_event({"type": "error", "code": "conversation_busy", "conversation_id": conversation,
                                   "message": "This conversation is still answering; cancel it or wait."})
            return
        self.pending += 1
        try:
            run = await self._prepare(message)
        finally:
            self.pending -= 1
        if run is not None:
            task = asyncio.ensure_future(self._stream(run))
            self.runs[run.conversation_id] = task
            task.add_done_callback(lambda _t, cid=run.conversation_id: self.runs.pop(cid, None))

    async def _prepare(self, message) -> runner.PreparedRun | None:
        try:
            data = await db(_validate_query)(message)
            request = runner.RunRequest(
                user=self.user, api_key=self.api_key, agent=data["agent_type"], query=data["query"],
                conversation_id=str(data["conversation_id"]) if data.get("conversation_id") else None,
                model=data.get("model") or None, max_tokens=data.get("max_tokens"),
                temperature=data.get("temperature"), cache=data.get("cache", True), attachment=data.get("image"))
            return await runner.prepare(request)
        except exceptions.PermissionDenied as denied:
            await self._refuse("permission_denied", str(denied.detail), CLOSE_FORBIDDEN)
        except exceptions.APIException as error:
            from relay.api.errors import _flatten

            await self.send_event({"type": "error", "code": error.default_code if not isinstance(
                error, exceptions.ValidationError) else "invalid", "message": _flatten(error.detail)})
        return None

    async def _stream(self, run: runner.PreparedRun):
        try:
            async for event in runner.stream(run):
                await self.send_event({**event, "conversation_id": run.conversation_id})
        except asyncio.CancelledError:
            if run.outcome is not None:  # stored as cancelled: tell the client what it cost
                status, total_tokens, cost = run.outcome
                await self.send_event({"type": "done", "status": status, "total_tokens": total_tokens,
                                       "cost": str(cost), "conversation_id": run.conversation_id})
            raise
        except Exception:  # a closed socket mid-send: the run was already stored as it ended
            logger.info("websocket stream ended early", exc_info=True)

    async def _on_cancel(self, message):
        conversation = str(message.get("conversation_id") or "")
        targets = [self.runs[conversation]] if conversation in self.runs else (
            [] if conversation else list(self.runs.values()))
        if not targets:
            await self.send_event({"type": "error", "code": "nothing_to_cancel", "message": "Nothing is running."})
            return
        for task in targets:
            task.cancel()
        await asyncio.gather(*targets, return_exceptions=True)

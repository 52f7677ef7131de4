"""Idempotent retries on the run endpoints: the `Idempotency-Key` header.

A client that retries after a timeout must not pay twice. The first request with a key claims it
(a row unique per credential and key, so the database decides between instances), and the run it
starts is bound to the claim. A replay with the same key and body gets that run's stored answer,
on the replay's own transport, and nothing runs or is billed; while the run is still going the
replay is 409, with another body 422. A claim whose run was refused before it started (402, 429,
...) is given back so that the retry runs. Keys expire after 24 hours; a claim that a dead
instance left without a run is abandoned after the budget reservation's TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import exceptions, status

from relay.eventloop.db import db

HEADER = "HTTP_IDEMPOTENCY_KEY"
LIFETIME = timedelta(hours=24)
_WELL_FORMED = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as the header's value


class InvalidIdempotencyKey(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Idempotency-Key must be 1 to 255 visible ASCII characters."
    default_code = "invalid_idempotency_key"


class IdempotencyKeyInUse(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "A request with this Idempotency-Key is still running; retry when it has finished."
    default_code = "idempotency_key_in_use"


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key was used with another request; use a new key for a new request."
    default_code = "idempotency_key_reused"


@dataclass
class Claim:
    pk: int
    replay: object | None = None  # the stored answer (agents.Message) to return instead of running


def presented(django_request) -> str | None:
    """The request's Idempotency-Key, None without one; InvalidIdempotencyKey when malformed."""
    value = django_request.META.get(HEADER)
    if value is None:
        return None
    if not _WELL_FORMED.fullmatch(value):
        raise InvalidIdempotencyKey()
    return value


def request_hash(endpoint: str, body: dict) -> str:
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def credential_of(user, api_key) -> str:
    return f"key:{api_key.pk}" if api_key is not None else f"user:{user.pk}"


def claim(user, api_key, key: str, endpoint: str, body: dict, now=None) -> Claim:
    """Claim `key` for a new run, or find the run it already names (replay); raises 409/422."""
    from agents.models import IdempotencyKey, Message

    now = now or timezone.now()
    credential, digest = credential_of(user, api_key), request_hash(endpoint, body)
    for _attempt in range(3):
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(credential=credential, key=key, request_hash=digest, created_at=now)
            return Claim(row.pk)
        except IntegrityError:
            existing = (IdempotencyKey.objects.select_related("message")
                        .filter(credential=credential, key=key).first())
        if existing is None:
            continue  # released between our insert and our read: claim it afresh
        if _expired(existing, now):
            IdempotencyKey.objects.filter(pk=existing.pk, created_at=existing.created_at).delete()
            continue
        if existing.request_hash != digest:
            raise IdempotencyKeyReused()
        if existing.message is None or existing.message.status == Message.Status.RUNNING:
            raise IdempotencyKeyInUse()
        return Claim(existing.pk, replay=existing.message)
    raise IdempotencyKeyInUse()


def _expired(row, now) -> bool:
    if row.created_at <= now - LIFETIME:
        return True
    abandoned = timedelta(seconds=settings.RELAY_BUDGET_RESERVATION_TTL)
    return row.message_id is None and row.created_at <= now - abandoned


def bind(claimed: Claim, message_id) -> None:
    from agents.models import IdempotencyKey

    IdempotencyKey.objects.filter(pk=claimed.pk).update(message_id=message_id)


def release(claimed: Claim) -> None:
    from agents.models import IdempotencyKey

    IdempotencyKey.objects.filter(pk=claimed.pk, message__isnull=True).delete()


def prune(now=None) -> int:
    """Delete expired keys (the periodic job); claims also replace expired keys as they meet them."""
    from agents.models import IdempotencyKey

    return IdempotencyKey.objects.filter(created_at__lte=(now or timezone.now()) - LIFETIME).delete()[0]


async def prepare_once(django_request, endpoint: str, body: dict, request):
    """runner.prepare, or with an Idempotency-Key the replay of the run that key already started."""
    from agents import runner

    key = presented(django_request)
    if key is None:
        return await runner.prepare(request)
    claimed = await db(claim)(request.user, request.api_key, key, endpoint, body)
    if claimed.replay is not None:
        return await db(runner.replayed)(request, claimed.replay)
    try:
        run = await runner.prepare(request)
    except BaseException:
        await asyncio.shield(db(release)(claimed))
        raise
    try:
        await db(bind)(claimed, run.message_id)
    except BaseException as failure:  # unbound, the run would stay reserved and its key "in use" until they expire
        if isinstance(failure, asyncio.CancelledError):  # the client left
            closing = runner.abandon(run)
        else:  # the database failed
            closing = runner.abandon(run, "error", "service_unavailable")
        try:
            await asyncio.shield(closing)
        finally:
            await asyncio.shield(db(release)(claimed))
        raise
    return run

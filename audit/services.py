"""Appending to the audit trail: `record()` (and `arecord()` for async code). Nothing else writes it.

record() runs inside the caller's transaction when there is one, so an event exists if and
only if the action it describes committed. Chaining is serialized across processes (on
PostgreSQL by an advisory lock, on SQLite by its single writer), so the chain never forks; in a
transaction the lock is held until the caller's transaction ends: call record() last.

Concurrent writers do not queue behind that lock (PostgreSQL). A record() that finds the lock
taken writes its event to the queue (`PendingAuditEvent`) in its own transaction instead, and
when that transaction commits, `drain()` takes the lock and chains everything queued in one
batch. Eight writers then share one chaining commit per batch instead of taking turns, each
holding the lock through its own commit. One process drains at a time; the others' queued
events go into its batch. The drain commits without waiting for the WAL flush: if the server
crashes before the flush, the queued rows (committed durably by their writers) are still there
and are chained again by the next drain, and anything that later commits durably flushes the
drain before it. A queued event has no sequence until it is drained.

On PostgreSQL an append is two round trips, or one when its events are queued, and a drain batch
two (`audit.pg_append`): trying the lock and queueing are one function call, and outside a
transaction record() runs its own, its BEGIN and COMMIT sent with its statements (there the append
lock is a session lock, taken in the first round trip and let go of after the second's COMMIT).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models.base import ModelState
from django.utils import timezone

from audit import context, pg_append
from audit.actions import DENIED, STATUSES, SUCCESS
from audit.chain import GENESIS, clean_text, compute_hash, normalise, normalise_ip
from audit.models import AuditCheckpoint, AuditEvent
from audit.pg_append import APPEND_LOCK_KEY, DRAIN_BATCH, HEAD_SQL
from relay.eventloop.db import run_db

_log = logging.getLogger(__name__)


def _authenticated(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def _key_prefix(key) -> str:
    if key is None:
        return ""
    return key if isinstance(key, str) else (getattr(key, "prefix", "") or "")


def _request_user(request):
    """(user, credential) a request was authenticated as, without running authentication again.

    Reading `.user` of a DRF Request that has not authenticated yet would authenticate it (and
    a bare Request built for an error response would overwrite the real user with anonymous),
    so only a user DRF already set is taken from it; otherwise the Django request's, which DRF
    updates whenever it authenticates.
    """
    django_request = getattr(request, "_request", request)
    user = request.__dict__.get("_user") if django_request is not request else None
    if _authenticated(user) is None:
        user = getattr(django_request, "user", None)
    return _authenticated(user), getattr(django_request, "auth", None)


def _actor_fields(actor, organization, request, api_key, bound) -> dict:
    user, key = _authenticated(actor), api_key
    if user is None and request is not None:
        user, request_key = _request_user(request)
        key = key if key is not None else request_key
    context.resolve_actor(bound)
    if user is not None:
        same = user.pk == bound.actor_id
        fields = {"actor_ref": user.pk, "actor_name": user.get_username(),
                  "organization_ref": getattr(user, "organization_id", None),
                  "api_key_prefix": _key_prefix(key) or (bound.api_key_prefix if same else "")}
    else:
        fields = {"actor_ref": bound.actor_id, "actor_name": bound.actor_name,
                  "organization_ref": bound.organization_id, "api_key_prefix": bound.api_key_prefix}
        if api_key is not None:
            fields["api_key_prefix"] = _key_prefix(api_key)
    if organization is not None:
        fields["organization_ref"] = getattr(organization, "pk", organization)
    return fields


def _origin_fields(request, bound) -> dict:
    if not bound.request_id and request is not None:
        django_request = getattr(request, "_request", request)
        derived = context.from_request(django_request)
        derived.request_id = getattr(django_request, "request_id", "")
        bound = derived
    return {"request_id": bound.request_id or "", "ip": normalise_ip(bound.ip),
            "user_agent": clean_text(bound.user_agent, 512)}


def _lock(connection) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
        elif connection.vendor == "sqlite" and getattr(connection, "transaction_mode", None) != "IMMEDIATE":
            # A write that touches nothing takes SQLite's write lock before we read the head,
            # for connections not opened in IMMEDIATE mode (the embedded settings use it).
            cursor.execute("UPDATE audit_auditevent SET id = id WHERE 0")


def head(using: str = DEFAULT_DB_ALIAS) -> tuple[int, str]:
    """(sequence, hash) of the newest event, or of the last checkpoint if pruning emptied the table."""
    # Plain SQL: every audited action reads the head, and the ORM's query building cost more
    # than the indexed lookup itself.
    with connections[using].cursor() as cursor:
        cursor.execute(HEAD_SQL)
        last = cursor.fetchone()
    if last:
        return tuple(last)
    checkpoint = (AuditCheckpoint.objects.using(using).order_by("-last_sequence")
                  .values_list("last_sequence", "last_hash").first())
    return checkpoint or (0, GENESIS)


_blank: dict = {}


def _new_event(**fields) -> AuditEvent:
    """An unsaved AuditEvent without Model.__init__ (its per-field walk and init signals cost a
    tenth of an append); every concrete field starts at its default, as __init__ would set it."""
    if not _blank:
        _blank.update({f.attname: f.get_default() for f in AuditEvent._meta.concrete_fields})
    event = AuditEvent.__new__(AuditEvent)
    event._state = ModelState()
    event.__dict__.update(_blank, **fields)
    return event


def record(action: str, *, status: str = SUCCESS, resource: str = "", metadata: dict | None = None,
           actor=None, organization=None, request=None, api_key=None, using: str = DEFAULT_DB_ALIAS) -> AuditEvent:
    """Append one event. Fields not given come from the request, then from the audit context.

    `actor` is a User (None: whoever the request/context says), `organization` an Organization or
    id (None: the actor's), `api_key` an APIKey or its prefix, `request` a Django or DRF request.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    bound = context.current()
    event = _new_event(
        action=clean_text(action, 64), status=status, resource=clean_text(resource, 255),
        metadata=normalise(metadata or {}),
        **_actor_fields(actor, organization, request, api_key, bound), **_origin_fields(request, bound),
    )
    event.actor_id, event.organization_id = event.actor_ref, event.organization_ref
    together = getattr(_together, "events", None)
    if together is not None and using == DEFAULT_DB_ALIAS:
        together.append(event)  # appended with the others when appending_together() ends
    else:
        _append([event], using)
    if status == DENIED:
        bound.denial_recorded = True
    return event


_together = threading.local()


@contextmanager
def appending_together():
    """Inside a transaction: the events record() makes here are appended together at the end.

    One lock, one head read and one INSERT for all of them (the group commit of model calls,
    relay/eventloop/group_commit.py). Until the block ends, the events it returned have no sequence yet.
    """
    with collecting_events() as events:
        yield
        if events:
            _append(events, DEFAULT_DB_ALIAS)


@contextmanager
def collecting_events():
    """The events record() makes in the block, not appended: the caller appends them (the list
    yielded) in its own transaction (audit.loop_append)."""
    previous = getattr(_together, "events", None)
    _together.events = events = []
    try:
        yield events
    finally:
        _together.events = previous


def _append(events: list[AuditEvent], using: str) -> None:
    """Chain the events after the head under the append lock, or queue them if another writer holds it."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        with transaction.atomic(using=using, savepoint=False):
            _lock(connection)
            _set_time(events)
            _chain(events, using)
    elif not connection.in_atomic_block and connection.get_autocommit():
        _append_alone(events, connection)
    else:
        with transaction.atomic(using=using, savepoint=False):
            if not _lock_or_queue(events, connection, begin=False):
                # robust: the caller's change has committed; a failed drain is redone by the next one.
                transaction.on_commit(lambda: drain(using, wait=False), using=using, robust=True)


def _set_time(events) -> None:
    now = timezone.now()
    for event in events:
        event.time = now


def _lock_or_queue(events: list[AuditEvent], connection, *, begin: bool) -> bool:
    """One round trip: take the append lock and chain the events (True), or queue them (False).

    Chained, the events are inserted in a second round trip. `begin` (outside a transaction):
    each round trip is a transaction of its own; queued events are committed in the first, and
    this process then drains unless another one already does.
    """
    _set_time(events)  # a queued event's time; a chained one's is set again below, under the lock
    got, head_row, drainer = pg_append.lock_or_queue(connection, events, alone=begin)
    if not got:
        if drainer:
            _drain_after_queueing(connection)
        return False
    _set_time(events)
    _link(events, head_row or head(connection.alias))
    pg_append.chain_insert(connection, events, alone=begin)  # a failure: the caller gives the lock up
    return True


def _append_alone(events: list[AuditEvent], connection) -> None:
    """record() outside a transaction: its own, whose BEGIN and COMMIT travel with its statements."""
    try:
        _lock_or_queue(events, connection, begin=True)
    except BaseException:
        # In case the lock was taken before the failure: a session lock outlives the rollback.
        pg_append.give_up_session_lock(connection)
        raise


def _drain_after_queueing(connection) -> None:
    try:
        drain(connection.alias, wait=False, locked=True)
    except Exception:  # like a robust on_commit hook: the event is queued; the next drain chains it
        _log.exception("audit drain failed; the queued events wait for the next drain")


def _link(events: list[AuditEvent], last: tuple[int, str]) -> None:
    """Give the events (their times set) their sequence and hashes after `last`; the caller holds the lock."""
    sequence, prev_hash = last
    for event in events:
        sequence += 1
        event.sequence, event.prev_hash = sequence, prev_hash
        event.hash = prev_hash = compute_hash(prev_hash, event)


def _chain(events: list[AuditEvent], using: str) -> None:
    """Link the events after the head and insert them with the ORM (SQLite); the caller holds the lock."""
    _link(events, head(using))
    for event in events:
        event._append_allowed = True
    if len(events) == 1:
        events[0].save(using=using)
    else:  # the queryset refuses bulk inserts from anyone but this module
        models.QuerySet.bulk_create(AuditEvent.objects.using(using).all(), events)


def drain(using: str = DEFAULT_DB_ALIAS, *, wait: bool = True, locked: bool = False) -> int:
    """Chain every queued event, in the order queued; returns how many.

    One drainer at a time in the cluster (a session advisory lock). After a queueing commit
    (`wait=False`) it returns at once if another process is draining: that drainer looks at the
    queue again after letting go, and the event was committed before it let go, so one of them
    chains it. verify_audit and the checkpoint jobs wait their turn (`wait=True`) and so pick up
    what a process killed between its commit and its drain left queued. `locked`: the caller
    already holds the drain lock. Inside a transaction it does nothing: the append lock would be
    held until that transaction ends.
    """
    connection = connections[using]
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return 0
    chained = 0
    while True:
        if not locked and not pg_append.take_drain_lock(connection, wait):
            return chained
        try:
            while (batch := _drain_batch(connection, using)) == DRAIN_BATCH:
                chained += batch
            chained += batch
        except BaseException:
            pg_append.release_drain_lock(connection, look=False)
            raise
        locked = False
        if not pg_append.release_drain_lock(connection, look=True):  # what was queued while we held it
            return chained


def _drain_batch(connection, using: str) -> int:
    """Move the oldest queued events (up to DRAIN_BATCH) onto the chain: two round trips a batch."""
    return pg_append.drain_batch(connection, lambda: head(using))


async def arecord(action: str, **kwargs) -> AuditEvent:
    """record() for async code: on the async DB pool (relay/eventloop/db.py), in the caller's audit context."""
    return await run_db(record, action, **kwargs)

"""Operator work on the trail: verify the chain, prune old events behind a signed checkpoint."""

from __future__ import annotations

import datetime as dt

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit import chain, triggers
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import _lock

_CHUNK = 2000


def _checkpoint(using: str):
    return AuditCheckpoint.objects.using(using).order_by("-last_sequence").first()


def verify_chain(using: str = DEFAULT_DB_ALIAS, *, until_sequence: int | None = None) -> chain.Verdict:
    """Walk the whole chain (from the last checkpoint, whose signature must hold)."""
    start_sequence, start_hash = 1, chain.GENESIS
    checkpoint = _checkpoint(using)
    if checkpoint is not None:
        if not chain.signature_valid(checkpoint):
            return chain.Verdict(False, 0, f"Checkpoint at #{checkpoint.last_sequence} (id {checkpoint.pk}) has an "
                                 "invalid signature: it was altered or signed with another SECRET_KEY.",
                                 checkpoint.last_sequence)
        start_sequence, start_hash = checkpoint.last_sequence + 1, checkpoint.last_hash
    events = AuditEvent.objects.using(using).filter(sequence__gte=start_sequence).order_by("sequence")
    if until_sequence is not None:
        events = events.filter(sequence__lte=until_sequence)
    return chain.verify(events.iterator(chunk_size=_CHUNK), start_sequence=start_sequence, start_hash=start_hash)


class PruneRefused(Exception):
    pass


def prune(before: dt.datetime, using: str = DEFAULT_DB_ALIAS) -> AuditCheckpoint | None:
    """Delete events older than `before`, leaving a signed checkpoint where the chain now starts.

    The pruned part is verified first: pruning a broken chain would destroy the evidence.
    Returns None when nothing is old enough.
    """
    connection = connections[using]
    with transaction.atomic(using=using):
        _lock(connection)  # no append may interleave with the cut
        last = (AuditEvent.objects.using(using).filter(time__lt=before).order_by("-sequence")
                .values_list("sequence", "hash").first())
        if last is None:
            return None
        verdict = verify_chain(using, until_sequence=last[0])
        if not verdict.ok:
            raise PruneRefused(f"The chain is broken, nothing was pruned: {verdict.message}")
        count = _delete_with_trigger_lifted(connection, using, last[0])
        created = timezone.now()
        checkpoint = AuditCheckpoint(
            last_sequence=last[0], last_hash=last[1], pruned_count=count, pruned_before=before, created_at=created,
            signature=chain.sign(chain.checkpoint_message(last[0], last[1], count, before, created)),
        )
        checkpoint._append_allowed = True
        checkpoint.save(using=using)
    return checkpoint


def _delete_with_trigger_lifted(connection, using: str, last_sequence: int) -> int:
    # The model refuses delete(); the raw delete of a plain queryset goes under it, and the
    # trigger lets it through only inside this transaction.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SET LOCAL {triggers.PRUNE_SETTING} = 'on'")
        elif connection.vendor == "sqlite":
            cursor.execute(triggers.SQLITE_DROP_DELETE_TRIGGER)
    count = AuditEvent._base_manager.using(using).filter(sequence__lte=last_sequence)._raw_delete(using)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(triggers.SQLITE_DELETE_TRIGGER)
        elif connection.vendor == "postgresql":
            cursor.execute(f"SET LOCAL {triggers.PRUNE_SETTING} = 'off'")
    return count

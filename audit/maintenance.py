"""Operator work on the trail: verify the chain, sign its head, prune old events behind a signed checkpoint."""

from __future__ import annotations

import datetime as dt

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit import chain, triggers
from audit.models import AuditCheckpoint, AuditEvent, AuditHeadCheckpoint
from audit.services import _lock, drain, head

_CHUNK = 2000


def _checkpoint(using: str):
    return AuditCheckpoint.objects.using(using).order_by("-last_sequence").first()


def _latest_head(using: str):
    return AuditHeadCheckpoint.objects.using(using).order_by("-sequence", "-created_at").first()


def write_head_checkpoint(using: str = DEFAULT_DB_ALIAS, *, now: dt.datetime | None = None):
    """Sign the chain head as it is now (None while the trail is empty).

    Without the append lock: appends commit one at a time in sequence order under it, so the
    newest committed event stays on the chain whatever commits next, and the hot path never
    waits for a checkpoint. Not an event: writing one does not move the head.
    """
    drain(using)
    sequence, hash_ = head(using)
    if sequence == 0:
        return None
    created = now or timezone.now()
    checkpoint = AuditHeadCheckpoint(sequence=sequence, hash=hash_, created_at=created,
                                     signature=chain.sign(chain.head_message(sequence, hash_, created)))
    checkpoint._append_allowed = True
    checkpoint.save(using=using)
    return checkpoint


def verify_chain(using: str = DEFAULT_DB_ALIAS, *, until_sequence: int | None = None,
                 max_checkpoint_age: dt.timedelta | None = None, now: dt.datetime | None = None) -> chain.Verdict:
    """Walk the whole chain, from the last prune checkpoint through the latest checkpoint of the head.

    Both checkpoints' signatures must hold; the chain must reach the head checkpoint with its
    hash (unless `until_sequence` asks for a prefix). With `max_checkpoint_age`, the latest head
    checkpoint must also be that recent: deleting the newest checkpoints along with the newest
    events would otherwise go unnoticed.
    """
    drain(using)  # what a killed process left queued
    start_sequence, start_hash = 1, chain.GENESIS
    cut, latest = _checkpoint(using), _latest_head(using)
    for checkpoint, name, sequence in ((cut, "prune checkpoint", cut and cut.last_sequence),
                                       (latest, "checkpoint of the head", latest and latest.sequence)):
        if checkpoint is not None and not chain.signature_valid(checkpoint):
            return chain.Verdict(False, 0, f"The {name} at #{sequence} (id {checkpoint.pk}) has an invalid signature: "
                                 "it was altered, forged or signed with another SECRET_KEY.", sequence)
    if cut is not None:
        start_sequence, start_hash = cut.last_sequence + 1, cut.last_hash
    if max_checkpoint_age is not None and (stale := _stale(latest, max_checkpoint_age, now)):
        return stale
    anchor = (latest.sequence, latest.hash) if latest is not None else None
    if anchor is not None and anchor[0] == start_sequence - 1 and anchor[1] != start_hash:
        return chain.Verdict(False, 0, f"The checkpoint of the head at #{anchor[0]} does not match the prune "
                             "checkpoint there: one of them was replaced.", anchor[0])
    events = AuditEvent.objects.using(using).filter(sequence__gte=start_sequence).order_by("sequence")
    if until_sequence is not None:
        events = events.filter(sequence__lte=until_sequence)
    verdict = chain.verify(events.iterator(chunk_size=_CHUNK), start_sequence=start_sequence, start_hash=start_hash,
                           checkpoint=anchor)
    if verdict.ok and latest is not None and until_sequence is None:
        return _reached(verdict, latest)
    return verdict


def _stale(latest, max_age: dt.timedelta, now: dt.datetime | None) -> chain.Verdict | None:
    now = now or timezone.now()
    if latest is not None and latest.created_at >= now - max_age:
        return None
    newest = f"the newest was signed {chain.iso(latest.created_at)}" if latest else "there is none at all"
    return chain.Verdict(False, 0, f"No checkpoint of the head in the last {int(max_age.total_seconds())} s "
                         f"({newest}): Celery beat is not writing them, or the newest were deleted along with the "
                         "events after them.", latest.sequence if latest else None)


def _reached(verdict: chain.Verdict, latest) -> chain.Verdict:
    """The walk succeeded: it must also have got as far as the latest signed head."""
    if verdict.head_sequence >= latest.sequence:
        verdict.message += f" Reaches the checkpoint of #{latest.sequence} signed {chain.iso(latest.created_at)}."
        return verdict
    ends = verdict.head_sequence
    lost = (f"Event #{latest.sequence} was" if ends + 1 == latest.sequence
            else f"Events #{ends + 1}..#{latest.sequence} were")
    return chain.Verdict(False, verdict.verified, f"The chain does not reach the latest checkpoint: it ends at #{ends}"
                         f", but the checkpoint signed {chain.iso(latest.created_at)} vouches for #{latest.sequence} "
                         f"(hash {latest.hash}). {lost} deleted.", ends + 1, ends, verdict.head_hash)


class PruneRefused(Exception):
    pass


def prune(before: dt.datetime, using: str = DEFAULT_DB_ALIAS) -> AuditCheckpoint | None:
    """Delete events older than `before`, leaving a signed checkpoint where the chain now starts.

    The pruned part is verified first: pruning a broken chain would destroy the evidence.
    Returns None when nothing is old enough.
    """
    connection = connections[using]
    drain(using)
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
        _drop_heads_of_pruned_events(using, last[0])
        created = timezone.now()
        checkpoint = AuditCheckpoint(
            last_sequence=last[0], last_hash=last[1], pruned_count=count, pruned_before=before, created_at=created,
            signature=chain.sign(chain.checkpoint_message(last[0], last[1], count, before, created)),
        )
        checkpoint._append_allowed = True
        checkpoint.save(using=using)
    return checkpoint


def _drop_heads_of_pruned_events(using: str, last_sequence: int) -> None:
    # They vouch for events that are gone; the latest stays, whatever it vouches for, so that
    # verify_audit --max-checkpoint-age does not fail until beat writes the next one.
    latest = _latest_head(using)
    heads = AuditHeadCheckpoint._base_manager.using(using).filter(sequence__lte=last_sequence)
    if latest is not None:
        heads = heads.exclude(pk=latest.pk)
    heads._raw_delete(using)


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

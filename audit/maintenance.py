"""Operator work on the trail: verify the chain, sign its head, prune old events behind a signed checkpoint."""

from __future__ import annotations

import datetime as dt

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit import chain, head_checkpoints, triggers
from audit.models import AuditCheckpoint, AuditEvent, AuditHeadCheckpoint
from audit.services import _lock, drain

_CHUNK = 2000


def write_head_checkpoint(using: str = DEFAULT_DB_ALIAS, *, now: dt.datetime | None = None,
                          after_restore: bool = False):
    """Sign the chain head now (None while the trail is empty); see audit.head_checkpoints.write."""
    return head_checkpoints.write(using, now=now, after_restore=after_restore)


def verify_chain(using: str = DEFAULT_DB_ALIAS, *, until_sequence: int | None = None,
                 max_checkpoint_age: dt.timedelta | None = None, now: dt.datetime | None = None) -> chain.Verdict:
    """Walk the whole chain, from the last prune checkpoint through the latest checkpoint of the head.

    Every checkpoint's signature must hold, the head checkpoints must form an unbroken series that
    still holds the newest one this cluster signed, each must match the event at its sequence, and
    the chain must reach the latest (unless `until_sequence` asks for a prefix). With
    `max_checkpoint_age`, the latest must also be that recent.
    """
    drain(using)  # what a killed process left queued
    start_sequence, start_hash = 1, chain.GENESIS
    cut = head_checkpoints.prune_cut(using)
    if cut is not None and not chain.signature_valid(cut):
        return chain.Verdict(False, 0, f"The prune checkpoint at #{cut.last_sequence} (id {cut.pk}) has an invalid "
                             "signature: it was altered, forged or signed with another SECRET_KEY.", cut.last_sequence)
    problem, latest = head_checkpoints.series_problem(using)
    if problem is not None:
        return chain.Verdict(False, 0, problem)
    if cut is not None:
        start_sequence, start_hash = cut.last_sequence + 1, cut.last_hash
    if max_checkpoint_age is not None and (stale := _stale(latest, max_checkpoint_age, now)):
        return stale
    events = AuditEvent.objects.using(using).filter(sequence__gte=start_sequence).order_by("sequence")
    if until_sequence is not None:
        events = events.filter(sequence__lte=until_sequence)
    verdict = chain.verify(events.iterator(chunk_size=_CHUNK), start_sequence=start_sequence, start_hash=start_hash,
                           checkpoints=head_checkpoints.marks(using, start_sequence - 1))
    if verdict.ok and latest is not None and until_sequence is None:
        return _reached(verdict, latest)  # the newest vouches for the furthest head: the series is monotone
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
    # verify_audit --max-checkpoint-age does not fail until beat writes the next one (and the
    # series keeps its newest member). The first one left links to a dropped one: verify allows that.
    latest = head_checkpoints.latest(using)
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
    _drop_heads_of_pruned_events(using, last_sequence)  # the checkpoint tables' trigger is lifted the same way
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(triggers.SQLITE_DELETE_TRIGGER)
        elif connection.vendor == "postgresql":
            cursor.execute(f"SET LOCAL {triggers.PRUNE_SETTING} = 'off'")
    return count

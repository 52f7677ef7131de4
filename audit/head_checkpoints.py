"""Checkpoints of the chain head: a signed series, linked one to the next, whose newest member is
also remembered outside the database.

Someone who can write the database but does not hold SECRET_KEY can rewrite events and rehash
everything after them; what stops them is a signed checkpoint that vouches for the old hashes.
So a checkpoint is only signed over a chain verified from the one before it, each checkpoint
signs its predecessor's signature (removing one from the middle of the series breaks the next
link), and the cache (Redis in production: another service, another credential) remembers the
newest one this cluster signed. Deleting the newest checkpoints along with the events they vouch
for then leaves a series that is consistent in the database but no longer holds the remembered
one: the next checkpoint refuses to be signed, and verify_audit fails.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit import chain
from audit.models import AuditCheckpoint, AuditEvent, AuditHeadCheckpoint
from audit.services import _lock, drain, head

logger = logging.getLogger(__name__)

_CHUNK = 2000
SERIES_LOCK_KEY = 0x52454C4159484541  # "RELAYHEA": one writer of the series at a time (not the append lock)


class CheckpointRefused(Exception):
    """The chain or the series of checkpoints is not what the last checkpoint vouched for: nothing was signed."""


def latest(using: str = DEFAULT_DB_ALIAS) -> AuditHeadCheckpoint | None:
    return AuditHeadCheckpoint.objects.using(using).order_by("-id").first()


def prune_cut(using: str = DEFAULT_DB_ALIAS) -> AuditCheckpoint | None:
    return AuditCheckpoint.objects.using(using).order_by("-last_sequence").first()


# --- The copy outside the database ----------------------------------------------------------

def _anchor_key(using: str) -> str:
    return f"audit:head-checkpoint:{settings.DATABASES[using]['NAME']}"


# The copy is a second line of evidence, not a dependency: with the cache down, checkpoints are
# still signed and verified (and logged), only without this cross-check.

def remembered(using: str = DEFAULT_DB_ALIAS) -> dict | None:
    try:
        return cache.get(_anchor_key(using))
    except Exception:  # noqa: BLE001 - see above
        logger.warning("audit head checkpoint: the cache is unavailable, the remembered checkpoint is not checked",
                       exc_info=True)
        return None


def _remember(using: str, checkpoint: AuditHeadCheckpoint) -> None:
    try:
        cache.set(_anchor_key(using), {"sequence": checkpoint.sequence, "signature": checkpoint.signature,
                                       "created_at": chain.iso(checkpoint.created_at)}, timeout=None)
    except Exception:  # noqa: BLE001 - see above
        logger.warning("audit head checkpoint %s: the cache is unavailable, not remembered", checkpoint.pk,
                       exc_info=True)


def forget(using: str = DEFAULT_DB_ALIAS) -> None:
    """After restoring the database from a backup (its checkpoints are older than the remembered
    one), and after `flush` emptied it."""
    try:
        cache.delete(_anchor_key(using))
    except Exception:  # noqa: BLE001 - see above
        logger.warning("audit head checkpoint: the cache is unavailable, nothing forgotten", exc_info=True)


def missing_remembered(using: str = DEFAULT_DB_ALIAS) -> str | None:
    """Why the newest checkpoint this cluster signed is not in the database, or None."""
    anchor = remembered(using)
    if anchor is None or AuditHeadCheckpoint.objects.using(using).filter(signature=anchor["signature"]).exists():
        return None
    return (f"The newest checkpoint of the head this cluster signed (#{anchor['sequence']}, {anchor['created_at']}) "
            "is gone from the database: checkpoints were deleted, with the events they vouched for rewritten or "
            "deleted. If the database was restored from a backup instead, run `manage.py checkpoint_audit "
            "--after-restore`.")


# --- Writing --------------------------------------------------------------------------------

def write(using: str = DEFAULT_DB_ALIAS, *, now: dt.datetime | None = None, after_restore: bool = False):
    """Sign the chain head as it is now (None while the trail is empty); CheckpointRefused if the
    chain since the previous checkpoint, or the series itself, is not intact.

    Without the append lock: appends commit one at a time in sequence order under it, so the
    newest committed event stays on the chain whatever commits next, and the hot path never
    waits for a checkpoint. Not an event: writing one does not move the head.
    """
    drain(using)
    connection = connections[using]
    with transaction.atomic(using=using):
        _series_lock(connection)  # two writers would both link to the same predecessor
        if after_restore:
            forget(using)
        elif (gone := missing_remembered(using)) is not None:
            _refuse(gone)
        previous = latest(using)
        sequence, hash_ = head(using)
        if sequence == 0:
            return None
        if (problem := _unverified_since(using, previous, sequence, hash_)) is not None:
            _refuse(problem)
        created = now or timezone.now()
        link = previous.signature if previous is not None else ""
        checkpoint = AuditHeadCheckpoint(sequence=sequence, hash=hash_, created_at=created, previous_signature=link,
                                         signature=chain.sign(chain.head_message(sequence, hash_, created, link)))
        checkpoint._append_allowed = True
        checkpoint.save(using=using)
    _remember(using, checkpoint)
    # The log is a second copy outside the database, for operators who ship it elsewhere.
    logger.info("audit head checkpoint %s: #%s %s signature %s", checkpoint.pk, sequence, hash_, checkpoint.signature)
    return checkpoint


def _refuse(problem: str):
    logger.error("audit head checkpoint REFUSED: %s", problem)
    raise CheckpointRefused(problem)


def _series_lock(connection) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SERIES_LOCK_KEY])
    else:
        _lock(connection)  # SQLite has one writer: take it before reading the series


def _unverified_since(using: str, previous, sequence: int, hash_: str) -> str | None:
    """Why the chain up to (sequence, hash_) does not follow from `previous`, or None."""
    if previous is not None:
        if not chain.signature_valid(previous):
            return (f"The latest checkpoint of the head (id {previous.pk}, #{previous.sequence}) has an invalid "
                    "signature: it was altered, forged or signed with another SECRET_KEY.")
        if sequence < previous.sequence:
            return (f"The chain ends at #{sequence}, but the latest checkpoint vouches for #{previous.sequence}: "
                    "events were deleted.")
    start_sequence, start_hash = _start(using, previous)
    events = AuditEvent.objects.using(using).filter(sequence__gte=start_sequence, sequence__lte=sequence)
    verdict = chain.verify(events.order_by("sequence").iterator(chunk_size=_CHUNK), start_sequence=start_sequence,
                           start_hash=start_hash)
    if not verdict.ok:
        return f"The chain since the latest checkpoint is broken: {verdict.message}"
    if (verdict.head_sequence, verdict.head_hash) != (sequence, hash_):
        return (f"The chain since the latest checkpoint ends at #{verdict.head_sequence}, not at the head "
                f"#{sequence}: events were deleted.")
    return None


def _start(using: str, previous) -> tuple[int, str]:
    """Where the walk starts: after the previous checkpoint, or after the prune cut if it is newer."""
    cut = prune_cut(using)
    if previous is not None and (cut is None or previous.sequence >= cut.last_sequence):
        return previous.sequence + 1, previous.hash
    if cut is not None:
        return cut.last_sequence + 1, cut.last_hash
    return 1, chain.GENESIS


# --- Verifying the series -------------------------------------------------------------------

def series_problem(using: str = DEFAULT_DB_ALIAS) -> tuple[str | None, AuditHeadCheckpoint | None]:
    """(why the series of head checkpoints is not intact or None, the newest checkpoint).

    Every signature must hold; each checkpoint must link to the one before it (the first one
    left may link to one that pruning removed; checkpoints from before links existed link to
    nothing) and vouch for a head at least as far along.
    """
    before = None
    for checkpoint in AuditHeadCheckpoint.objects.using(using).order_by("id").iterator(chunk_size=_CHUNK):
        name = f"The checkpoint of the head at #{checkpoint.sequence} (id {checkpoint.pk})"
        if not chain.signature_valid(checkpoint):
            return f"{name} has an invalid signature: it was altered, forged or signed with another SECRET_KEY.", None
        if before is not None and checkpoint.previous_signature != before.signature and (
                checkpoint.previous_signature or before.previous_signature):
            return (f"{name} does not link to the checkpoint before it (id {before.pk}): checkpoints between them "
                    "were deleted."), None
        if before is not None and checkpoint.sequence < before.sequence:
            return (f"{name} vouches for an older head than the checkpoint before it (#{before.sequence}): the chain "
                    "was cut and grown again."), None
        before = checkpoint
    return missing_remembered(using), before


def marks(using: str, from_sequence: int):
    """(sequence, hash) of every head checkpoint from `from_sequence` on, ascending (the series is monotone)."""
    return (AuditHeadCheckpoint.objects.using(using).filter(sequence__gte=from_sequence).order_by("id")
            .values_list("sequence", "hash").iterator(chunk_size=_CHUNK))

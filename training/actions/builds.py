"""Building a dataset version: asked for (audited), then run by a Celery task (audited when it ends).

The run streams the selected conversations' messages from the database (`iterator(chunk_size=)`,
one conversation in memory at a time, in the order of its id), redacts, removes duplicates,
splits, and writes canonical JSON lines to a file while hashing them. Its progress is written to
the version row as it goes (committed, so the API shows it); the result is written with its
`dataset.built` event in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable

from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper, Max, Q
from django.utils import timezone

from accounts.models import User
from agents.models import Conversation, Message
from audit import actions
from audit.services import record
from training import services, storage
from training.dedup import Deduplicator
from training.models import Dataset, DatasetVersion, TrainingConsent, VersionConversation
from training.redaction import KINDS
from training.rows import FIELDS, canonical, conversation_rows

logger = logging.getLogger(__name__)
CHUNK = 2000
PROGRESS_SECONDS = 1.0


@transaction.atomic
def request_build(dataset: Dataset, *, actor: User | None, enqueue: bool = True) -> DatasetVersion:
    """A queued version of dataset; its build starts once this commits (ConsentRequired when training is off)."""
    Dataset.objects.select_for_update().filter(pk=dataset.pk).first()  # version numbers in order
    if not services.consent_enabled(dataset.organization_id):
        raise services.ConsentRequired("This organization has not turned on training on its interactions; an "
                                       "organization admin can (training consent).")
    number = (dataset.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = DatasetVersion.objects.create(dataset=dataset, number=number, requested_by=actor,
                                            definition=services.definition_of(dataset))
    record(actions.DATASET_BUILD_REQUESTED, actor=actor, organization=dataset.organization_id,
           resource=f"dataset_version:{version.pk}", metadata={"dataset": dataset.pk, "number": number})
    if enqueue:
        from training.tasks import build_version

        transaction.on_commit(lambda: build_version.delay(version.pk))
    return version


def _progress(version: DatasetVersion, **fields) -> None:
    DatasetVersion.objects.filter(pk=version.pk).update(**fields)
    for name, value in fields.items():
        setattr(version, name, value)


def _stream(definition: dict):
    """(conversation id, its messages) in conversation id order, one conversation held at a time."""
    selected = services.selected_answers(definition)
    messages = Message.objects.filter(conversation_id__in=selected.values("conversation_id")).annotate(
        selected=ExpressionWrapper(Q(pk__in=selected.values("pk")), output_field=BooleanField()))
    columns = ("conversation_id", *FIELDS)
    current, batch = None, []
    for values in messages.order_by("conversation_id", "id").values_list(*columns).iterator(chunk_size=CHUNK):
        if values[0] != current and batch:
            yield current, batch
            batch = []
        current = values[0]
        batch.append(dict(zip(FIELDS, values[1:], strict=True)))
    if batch:
        yield current, batch


def run_build(version_id: int, *, on_progress: Callable[[DatasetVersion], None] | None = None) -> DatasetVersion:
    """Build a queued version (the task's body and `manage.py build_dataset`'s). Failures end as `failed`."""
    version = DatasetVersion.objects.select_related("dataset").get(pk=version_id)
    # Only one worker starts it, however often the task is delivered.
    started = DatasetVersion.objects.filter(pk=version.pk, state=DatasetVersion.State.QUEUED).update(
        state=DatasetVersion.State.RUNNING, started_at=timezone.now())
    if not started:
        version.refresh_from_db()
        return version
    version.state = DatasetVersion.State.RUNNING
    definition = version.definition
    _progress(version, total=services.selected_answers(definition).count())
    temporary = storage.root() / f".building-{version.pk}-{os.getpid()}"
    try:
        if not services.consent_enabled(definition["organization"]):
            raise services.ConsentRequired("Training was turned off for this organization before the build ran.")
        storage.root().mkdir(parents=True, exist_ok=True)
        result = _write(version, definition, temporary, on_progress)
    except Exception as error:
        logger.exception("dataset version %s failed", version.pk)
        temporary.unlink(missing_ok=True)
        return _finish_failed(version, error)
    name = f"dataset-{version.dataset_id}-v{version.number}-{result['content_sha256'][:12]}.jsonl"
    os.replace(temporary, storage.path(name))
    try:
        return _finish_done(version, name, result)
    except Exception as error:  # consent turned off meanwhile, or a lock that could not be had
        logger.exception("dataset version %s failed as it finished", version.pk)
        storage.remove(name)
        return _finish_failed(version, error)


def _write(version, definition, temporary, on_progress) -> dict:
    digest, counts, dedup = hashlib.sha256(), Counter(), Deduplicator()
    tally = Counter()
    processed, last = 0, time.monotonic()
    holding = []
    with open(temporary, "wb") as out:
        for conversation_id, messages in _stream(definition):
            split = services.split_of(conversation_id, definition["validation_percent"])
            kept = 0
            for row, text in conversation_rows(conversation_id, messages, split, counts):
                processed += 1
                duplicate = dedup.seen(text)
                if duplicate:
                    tally[duplicate] += 1
                    continue
                line = (canonical(row) + "\n").encode()
                out.write(line)
                digest.update(line)
                tally[split] += 1
                kept += 1
            if kept:
                holding.append(VersionConversation(version=version, conversation_id=conversation_id))
            if len(holding) >= CHUNK:
                VersionConversation.objects.bulk_create(holding)
                holding = []
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                _progress(version, processed=processed)
                if on_progress:
                    on_progress(version)
        VersionConversation.objects.bulk_create(holding)
        size = out.tell()
    return {"processed": processed, "content_sha256": digest.hexdigest(), "file_size": size,
            "train_rows": tally["train"], "validation_rows": tally["validation"],
            "rows": tally["train"] + tally["validation"], "exact_duplicates": tally["exact"],
            "near_duplicates": tally["near"], "redactions": {kind: counts[kind] for kind in KINDS}}


def _deleted_meanwhile(version: DatasetVersion):
    """A conversation the version holds that was deleted while it was built (its withdrawal found
    no row of this version then), or None. Locking the held conversations waits for a deletion
    under way; one that starts later finds this version's rows, committed by then."""
    held = VersionConversation.objects.filter(version=version).values("conversation_id")
    locked = Conversation.objects.select_for_update().filter(pk__in=held).order_by("pk").values_list("pk", flat=True)
    for _ in locked.iterator(chunk_size=CHUNK):
        pass
    return VersionConversation.objects.filter(version=version).exclude(
        conversation_id__in=Conversation.objects.values("pk")).values_list("conversation_id", flat=True).first()


@transaction.atomic
def _finish_done(version: DatasetVersion, name: str, result: dict) -> DatasetVersion:
    # Consent and deletions may have changed while it ran; each is settled here, under its lock.
    if not TrainingConsent.objects.select_for_update().filter(organization_id=version.definition["organization"],
                                                              enabled=True).exists():
        raise services.ConsentRequired("Training was turned off for this organization while the build ran.")
    message = "" if result["rows"] else services.EMPTY_MESSAGE
    _progress(version, state=DatasetVersion.State.DONE, finished_at=timezone.now(), file_name=name,
              message=message, **result)
    gone = _deleted_meanwhile(version)
    if gone is not None:
        _progress(version, withdrawn_at=timezone.now(), withdrawn_reason=f"Conversation {gone} was deleted.")
    dataset = version.dataset
    record(actions.DATASET_BUILT, actor=version.requested_by, organization=dataset.organization_id,
           resource=f"dataset_version:{version.pk}",
           metadata={"dataset": dataset.pk, "number": version.number, "rows": version.rows,
                     "content_sha256": version.content_sha256, "redactions": version.redactions,
                     "exact_duplicates": version.exact_duplicates, "near_duplicates": version.near_duplicates})
    return version


@transaction.atomic
def _finish_failed(version: DatasetVersion, error: Exception) -> DatasetVersion:
    VersionConversation.objects.filter(version=version).delete()
    message = str(error) if isinstance(error, services.ConsentRequired) else "The build failed; see the server log."
    _progress(version, state=DatasetVersion.State.FAILED, finished_at=timezone.now(), message=message[:500])
    dataset = version.dataset
    record(actions.DATASET_BUILT, status=actions.ERROR, actor=version.requested_by,
           organization=dataset.organization_id, resource=f"dataset_version:{version.pk}",
           metadata={"dataset": dataset.pk, "number": version.number, "error": type(error).__name__})
    return version

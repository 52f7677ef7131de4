"""The audit trail: append-only, hash-chained events, the checkpoints pruning leaves behind, and
the signed checkpoints of the chain head that Celery beat writes.

Only `audit.services.record()` writes events. The model refuses updates and deletes here, and
database triggers (migration 0002) refuse them underneath the ORM too.
"""

from django.conf import settings
from django.db import models

from audit import chain
from audit.actions import STATUSES
from audit.chain import FORMAT_VERSION


class AppendOnlyError(Exception):
    """Someone tried to change or remove an audit record."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows cannot be updated.")

    def delete(self):
        raise AppendOnlyError(f"{self.model.__name__} rows cannot be deleted (use manage.py prune_audit).")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError(f"{self.model.__name__} rows cannot be updated.")

    def bulk_create(self, objs, *args, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows are appended one at a time by audit.services.")


class AppendOnlyModel(models.Model):
    """Refuses save() of an existing row and delete(); inserts need the service's permission."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding or not getattr(self, "_append_allowed", False):
            raise AppendOnlyError(
                f"{type(self).__name__} rows are written only by audit.services and never changed."
            )
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{type(self).__name__} rows cannot be deleted (use manage.py prune_audit).")


class RecordedFields(models.Model):
    """What an event says: who, what, when, from where. Chained events and queued ones share it."""

    time = models.DateTimeField(editable=False)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", db_index=False)
    actor_ref = models.BigIntegerField(null=True, blank=True, help_text="The actor's id when recorded.")
    actor_name = models.CharField(max_length=150, blank=True)
    api_key_prefix = models.CharField(max_length=16, blank=True)
    organization = models.ForeignKey("accounts.Organization", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+", db_index=False)
    organization_ref = models.BigIntegerField(null=True, blank=True, help_text="The organization's id when recorded.")
    action = models.CharField(max_length=64)
    resource = models.CharField(max_length=255, blank=True, help_text='What was acted on, e.g. "api_key:7".')
    status = models.CharField(max_length=16, choices=[(s, s) for s in STATUSES])
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=36, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        abstract = True


class AuditEvent(AppendOnlyModel, RecordedFields):
    """One thing someone did (or was refused), linked to the event before it by `prev_hash`.

    `actor` and `organization` are pointers that go NULL when the user or organization is
    deleted; `actor_ref`, `organization_ref` and `actor_name` keep what was recorded, and they
    (not the pointers) are what the hash covers, so deleting a user does not break the chain.
    Who may read an event is decided by the hashed references, never by the pointers, and
    verification fails for a pointer that is neither NULL nor its reference.
    """

    sequence = models.BigIntegerField(unique=True, editable=False)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    # The hash format (audit.chain): new events get the current one; rows written before the
    # column existed, or inserted outside the ORM, are the original format 1.
    version = models.PositiveSmallIntegerField(default=FORMAT_VERSION, db_default=1, editable=False)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        indexes = [
            # The organization-scoped list (API, admin filter) and the admin's actor search walk
            # these backwards.
            models.Index(fields=["organization_ref", "-sequence"], name="audit_event_org_ref_seq"),
            models.Index(fields=["actor_ref", "-sequence"], name="audit_event_actor_ref_seq"),
            # Deleting a user or organization sets its pointers NULL (UPDATE ... WHERE actor_id IN ...).
            models.Index(fields=["organization", "-sequence"], name="audit_event_org_seq"),
            models.Index(fields=["actor", "-sequence"], name="audit_event_actor_seq"),
            models.Index(fields=["time"], name="audit_event_time"),
            models.Index(fields=["request_id"], name="audit_event_request"),
        ]

    def __str__(self):
        return f"#{self.sequence} {self.action} {self.status} by {self.actor_name or 'anonymous'}"


class AuditCheckpoint(AppendOnlyModel):
    """Where pruning cut the chain: the last pruned event's sequence and hash, signed with SECRET_KEY."""

    last_sequence = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    pruned_count = models.BigIntegerField()
    pruned_before = models.DateTimeField()
    created_at = models.DateTimeField()
    signature = models.CharField(max_length=64)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-last_sequence"]
        get_latest_by = "last_sequence"

    def __str__(self):
        return f"checkpoint at #{self.last_sequence}"

    def signed_message(self) -> str:
        return chain.checkpoint_message(self.last_sequence, self.last_hash, self.pruned_count, self.pruned_before,
                                        self.created_at)


class AuditHeadCheckpoint(AppendOnlyModel):
    """The chain head (sequence and hash of the newest event) at a moment, signed with SECRET_KEY.

    verify_audit fails when the chain no longer reaches the latest one, so deleting the newest
    events is detected up to it; the series is linked and its newest member remembered outside
    the database (audit.head_checkpoints). Written every RELAY_AUDIT_CHECKPOINT_SECONDS by Celery beat
    (audit.jobs.audit_head_checkpoint) or by `manage.py checkpoint_audit`; not an event, so
    writing one never moves the chain.
    """

    sequence = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    signature = models.CharField(max_length=64, db_index=True)
    # The signature of the checkpoint before it (signed too): a checkpoint removed from the middle
    # of the series breaks the next one's link. Empty for the first, and for those from before links.
    previous_signature = models.CharField(max_length=64, blank=True, default="")

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence", "-created_at"]
        indexes = [models.Index(fields=["-sequence", "-created_at"], name="audit_head_latest")]

    def __str__(self):
        return f"head #{self.sequence} at {chain.iso(self.created_at)}"

    def signed_message(self) -> str:
        return chain.head_message(self.sequence, self.hash, self.created_at, self.previous_signature)


class PendingAuditEvent(RecordedFields):
    """An event recorded while another transaction held the append lock: queued, not yet chained.

    Written in the recording transaction, so it exists if and only if the change it describes
    committed; moved onto the chain in id order, in batches, by `audit.services.drain` (run when
    that transaction commits, and by verify_audit and the checkpoint jobs after a crash). Database
    triggers (migration 0005) refuse UPDATE and allow DELETE only to the drain.
    """

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"pending {self.action} {self.status} by {self.actor_name or 'anonymous'}"

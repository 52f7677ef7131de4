"""The audit trail's periodic jobs (Celery beat, once per cluster: relay.periodic); imported by AuditConfig.ready."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from audit.head_checkpoints import CheckpointRefused
from audit.maintenance import prune, verify_chain, write_head_checkpoint
from relay.periodic import register_job

logger = logging.getLogger(__name__)


@register_job("audit_checkpoint", lock="audit", timeout=3600, skipped={"skipped": True})
def audit_checkpoint() -> dict:
    """Verify the audit chain; past RELAY_AUDIT_RETENTION_DAYS, prune behind a signed checkpoint."""
    verdict = verify_chain()
    if not verdict.ok:
        logger.error("audit chain verification FAILED: %s", verdict.message)
        return {"ok": False, "message": verdict.message}
    days = settings.RELAY_AUDIT_RETENTION_DAYS
    checkpoint = prune(timezone.now() - dt.timedelta(days=days)) if days else None
    return {"ok": True, "pruned": checkpoint.pruned_count if checkpoint else 0}


# Its own lock: the daily verification (`audit`) may hold its lock for long on a big trail.
@register_job("audit_head_checkpoint", lock="audit-head", timeout=60, skipped={"skipped": True})
def audit_head_checkpoint() -> dict:
    """Sign the audit chain head (every RELAY_AUDIT_CHECKPOINT_SECONDS): from then on, verify_audit
    fails if any event up to it is deleted; only the events since the latest one are unprotected."""
    try:
        checkpoint = write_head_checkpoint()
    except CheckpointRefused as refused:  # logged as an error where it was refused
        return {"ok": False, "message": str(refused)}
    return {"ok": True, "sequence": checkpoint.sequence if checkpoint else 0}

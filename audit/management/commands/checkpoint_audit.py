from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS

from audit.maintenance import write_head_checkpoint


class Command(BaseCommand):
    help = ("Sign the audit chain head now (Celery beat does it every RELAY_AUDIT_CHECKPOINT_SECONDS): "
            "verify_audit then fails if any event up to it is deleted.")

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, database, **options):
        checkpoint = write_head_checkpoint(database)
        if checkpoint is None:
            self.stdout.write("The audit trail is empty: no head to sign.")
            return
        self.stdout.write(f"Checkpoint {checkpoint.pk} signed: head #{checkpoint.sequence} {checkpoint.hash}.")

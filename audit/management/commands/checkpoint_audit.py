from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from audit.head_checkpoints import CheckpointRefused
from audit.maintenance import write_head_checkpoint


class Command(BaseCommand):
    help = ("Sign the audit chain head now (Celery beat does it every RELAY_AUDIT_CHECKPOINT_SECONDS): "
            "verify_audit then fails if any event up to it is deleted. Refuses (exit 1) when the chain since the "
            "previous checkpoint, or the series of checkpoints, is not intact.")

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument("--after-restore", action="store_true",
                            help="The database was restored from a backup: forget the newest checkpoint this "
                                 "cluster remembers signing (the restored series ends before it) and sign anyway.")

    def handle(self, *args, database, after_restore=False, **options):
        try:
            checkpoint = write_head_checkpoint(database, after_restore=after_restore)
        except CheckpointRefused as refused:
            raise CommandError(f"Nothing was signed. {refused}") from None
        if checkpoint is None:
            self.stdout.write("The audit trail is empty: no head to sign.")
            return
        self.stdout.write(f"Checkpoint {checkpoint.pk} signed: head #{checkpoint.sequence} {checkpoint.hash}.")

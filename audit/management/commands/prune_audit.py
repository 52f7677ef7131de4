from django.core.management.base import BaseCommand, CommandError

from audit import actions
from audit.maintenance import PruneRefused, prune
from audit.management.commands.export_audit import moment
from audit.services import record


class Command(BaseCommand):
    help = ("Delete audit events older than --before, after verifying them, leaving a signed checkpoint "
            "so verify_audit still verifies what remains. Export them first if you must keep them.")

    def add_arguments(self, parser):
        parser.add_argument("--before", required=True, help="ISO date/datetime: events older than this go.")

    def handle(self, *args, before, **options):
        cutoff = moment(before)
        try:
            checkpoint = prune(cutoff)
        except PruneRefused as refused:
            raise CommandError(str(refused)) from None
        if checkpoint is None:
            self.stdout.write(f"No events before {cutoff.isoformat()}; nothing pruned.")
            return
        record(actions.AUDIT_PRUNED, resource=f"audit_checkpoint:{checkpoint.pk}",
               metadata={"before": cutoff, "pruned": checkpoint.pruned_count,
                         "last_sequence": checkpoint.last_sequence})
        self.stdout.write(f"Pruned {checkpoint.pruned_count} events up to #{checkpoint.last_sequence}; "
                          f"checkpoint {checkpoint.pk} signed.")

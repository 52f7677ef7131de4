import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from audit.maintenance import verify_chain


class Command(BaseCommand):
    help = ("Walk the audit hash chain and name the first altered, inserted, moved or missing event; fail when "
            "the chain does not reach the latest signed checkpoint of its head.")

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument("--max-checkpoint-age", type=int, metavar="SECONDS",
                            help="Also fail unless a checkpoint of the head was signed in the last SECONDS (run by "
                                 "monitoring with a few times RELAY_AUDIT_CHECKPOINT_SECONDS: catches the newest "
                                 "checkpoints deleted along with the newest events).")

    def handle(self, *args, database, max_checkpoint_age=None, **options):
        if max_checkpoint_age is not None and max_checkpoint_age <= 0:
            raise CommandError("--max-checkpoint-age takes a number of seconds above 0.")
        age = dt.timedelta(seconds=max_checkpoint_age) if max_checkpoint_age is not None else None
        verdict = verify_chain(database, max_checkpoint_age=age)
        if not verdict.ok:
            raise CommandError(f"Audit chain BROKEN after {verdict.verified} good events. {verdict.message}")
        self.stdout.write(verdict.message)

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from audit.maintenance import verify_chain


class Command(BaseCommand):
    help = "Walk the audit hash chain and name the first altered, inserted or missing event."

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, database, **options):
        verdict = verify_chain(database)
        if not verdict.ok:
            raise CommandError(f"Audit chain BROKEN after {verdict.verified} good events. {verdict.message}")
        self.stdout.write(verdict.message)

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.actions.organizations import create_organization


class Command(BaseCommand):
    help = "Create an organization (a tenant)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--time-zone", default="UTC", help="IANA time zone for budget periods (default UTC).")

    def handle(self, name, time_zone, **options):
        try:
            org = create_organization(name, time_zone=time_zone)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"Created organization {org.name!r} (id {org.pk})."))

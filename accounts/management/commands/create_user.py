import getpass
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.actions.users import create_user
from accounts.models import Organization
from accounts.services import known_roles


class Command(BaseCommand):
    help = "Create a user in an organization with a role."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--org", required=True, help="Organization name or slug.")
        parser.add_argument("--role", required=True, help="admin, user, viewer, api_user or a custom role.")
        parser.add_argument("--email", required=True)
        parser.add_argument("--team", help="Team name (created if new).")
        parser.add_argument("--password", help="Asked for on a terminal when not given.")

    def handle(self, username, org, role, email, team, password, **options):
        organization = Organization.objects.filter(name=org).first() or Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization {org!r}. Create it with: manage.py create_organization {org!r}")
        if role not in known_roles():
            raise CommandError(f"Unknown role {role!r}; roles are {', '.join(known_roles())}.")
        if password is None and sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords did not match.")
        try:
            user = create_user(username, organization=organization, role=role, email=email, password=password or None,
                               team=team)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        note = "" if password else " (no password: the user signs in with API keys only until one is set)"
        self.stdout.write(self.style.SUCCESS(f"Created user {user.username!r} as {role} in {organization}{note}."))

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.actions.keys import create_api_key
from accounts.actions.organizations import create_organization
from accounts.actions.users import create_user, update_user
from accounts.models import Organization, User
from accounts.roles import ROLES

DEMO_ORG = "Demo"


class Command(BaseCommand):
    help = "Create a demo organization with one user per role and their API keys (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--password", default="relay-demo-password",
                            help="Password of the demo users (default: relay-demo-password).")
        parser.add_argument("--new-keys", action="store_true", help="Issue fresh keys even if the users have some.")

    @transaction.atomic
    def handle(self, password, new_keys, **options):
        org = Organization.objects.filter(name=DEMO_ORG).first() or create_organization(DEMO_ORG)
        self.stdout.write(f"Organization: {org.name}")
        for role in ROLES:
            username = f"demo-{role.replace('_', '-')}"
            user = User.objects.filter(username=username).first()
            if user is None:
                user = create_user(username, organization=org, role=role, email=f"{username}@example.com",
                                   password=password, team="Research" if role != "admin" else "Platform")
                if role == "admin":
                    # The demo admin also runs the Django admin console.
                    user = update_user(None, user, is_staff=True, is_superuser=True)
                created = "created"
            else:
                created = "exists"
            line = f"  {role:9} {username:16} ({created})"
            if new_keys or not user.api_keys.exists():
                line += f"  key: {create_api_key(user, f'{username} demo key').secret}"
            else:
                line += "  key: already issued (secrets are not stored; --new-keys issues fresh ones)"
            self.stdout.write(line)
        self.stdout.write(f"Sign in at /login/ as any of them with the password {password!r}.")

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
        parser.add_argument("--url", default="",
                            help="Where the server will listen (make run): end with it, the users and what to try.")

    @transaction.atomic
    def handle(self, password, new_keys, url="", **options):
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
        if url:
            self.stdout.write(banner(url.rstrip("/"), password))


def banner(url: str, password: str) -> str:
    """What `make run` prints just before the server starts: where, who, and what to try first."""
    users = "\n".join(f"  {'demo-' + role.replace('_', '-'):16} / {password}   role: {role}"
                      + ("  (also runs the admin console)" if role == "admin" else "") for role in ROLES)
    return f"""
============================================================
Relay is starting on {url}/
Demo users (username / password, role):
{users}
What to try first:
  1. Sign in at {url}/login/ as demo-user.
  2. In the chat, ask the Math agent: integrate x^2 sin x
  3. Ask the Documents (RAG) agent: How do budgets work?  (its citations open the document)
  4. Open {url}/admin/ as demo-admin.
  API docs: {url}/api/docs/   Stop the server with Ctrl+C.
============================================================"""

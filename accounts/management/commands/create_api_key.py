from datetime import timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.actions.keys import create_api_key
from accounts.models import User


class Command(BaseCommand):
    help = "Create an API key for a user and print its secret once."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", nargs="*", help="Permission codenames (default: all the user holds).")
        parser.add_argument("--agents", nargs="*", help="Allowed agents (default: all the user may use).")
        parser.add_argument("--expires-days", type=int)
        parser.add_argument("--rpm", type=int, help="Requests per minute limit.")

    def handle(self, user, name, scopes, agents, expires_days, rpm, **options):
        owner = User.objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"No user {user!r}.")
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1.")
        if rpm is not None and rpm < 1:
            raise CommandError("--rpm must be at least 1.")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            issued = create_api_key(owner, name, scopes=scopes, allowed_agents=agents, expires_at=expires_at,
                                    requests_per_minute=rpm)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        except PermissionDenied as exc:  # a scope or agent the owner lacks (accounts.services.PrivilegeRefused)
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Created key {issued.key.name!r} (id {issued.key.pk}) for {owner.username}. "
                          "Store the secret now; it is not shown again:")
        self.stdout.write(issued.secret)

"""Recompute the ledger's spent counters of every budget's current period from UsageRecord."""

from django.core.management.base import BaseCommand, CommandError

from billing.budgets import rebuild_budget
from billing.ledger import LedgerUnavailable
from billing.models import Budget


class Command(BaseCommand):
    help = "Recompute budget counters (current periods) from usage records; live reservations are kept."

    def add_arguments(self, parser):
        parser.add_argument("--organization", help="only this organization (name or slug)")

    def handle(self, *args, organization=None, **options):
        budgets = Budget.objects.select_related("organization", "team", "user", "api_key").order_by("pk")
        if organization:
            budgets = budgets.filter(organization__slug=organization) | budgets.filter(organization__name=organization)
            if not budgets.exists():
                raise CommandError(f"No budgets for organization {organization!r}.")
        count = 0
        try:
            for budget in budgets:
                scope_key, spent = rebuild_budget(budget)
                self.stdout.write(f"{scope_key}: {spent} nano-USD")
                count += 1
        except LedgerUnavailable as error:
            raise CommandError(str(error))
        self.stdout.write(self.style.SUCCESS(f"Rebuilt {count} budget counter(s)."))

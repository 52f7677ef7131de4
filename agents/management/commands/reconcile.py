"""Check that the money books agree on live data; with --fix, repair what does not (audited)."""

import json

from django.core.management.base import BaseCommand, CommandError

from agents import reconcile
from billing.ledger import LedgerUnavailable


class Command(BaseCommand):
    help = ("Check the ledger against the usage records (every budget's current period), answers running past "
            "the reservation TTL, usage records without their agent.run audit event and reservations open past "
            "their deadline. Prints each discrepancy and exits 1 if any; --fix repairs and audits them.")

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true",
                            help="rebuild counters, interrupt stuck answers, record missing audit events, release "
                                 "expired reservations (each audited), then check again")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object instead of lines")
        parser.add_argument("--grace", type=float, default=reconcile.GRACE_SECONDS,
                            help="seconds before a disagreeing counter is read again (runs closing right now)")

    def handle(self, *args, fix=False, as_json=False, grace=reconcile.GRACE_SECONDS, **options):
        try:
            report = reconcile.check(grace=grace)
            repairs = reconcile.fix(report) if fix and not report.ok else []
            final = reconcile.check(grace=grace) if fix and not report.ok else report
        except LedgerUnavailable as error:
            raise CommandError(f"Cannot reconcile: {error}") from None
        if as_json:
            self._print_json(report, repairs, final, fix)
        else:
            self._print_lines(report, repairs, final)
        if not final.ok:
            raise CommandError(f"{len(final.discrepancies)} discrepancy(ies) remain"
                               + ("" if fix else "; run with --fix to repair them"), returncode=1)

    def _print_lines(self, report, repairs, final):
        for found in report.discrepancies:
            self.stdout.write(found.message)
        for kind in report.truncated:
            self.stdout.write(f"... more {kind} discrepancies than the {reconcile.LIMIT} listed (run again after --fix)")
        for repair in repairs:
            self.stdout.write(self.style.SUCCESS(f"fixed: {repair.message}"))
        if final is not report:
            for found in final.discrepancies:
                self.stdout.write(f"still: {found.message}")
        if final.ok:
            self.stdout.write(self.style.SUCCESS(summary(final, len(repairs))))

    def _print_json(self, report, repairs, final, fix):
        out = final.as_dict()
        if fix:
            out["found"] = [d.as_dict() for d in report.discrepancies]
            out["fixed"] = [d.as_dict() for d in repairs]
        self.stdout.write(json.dumps(out, default=str))


def summary(report, repairs: int) -> str:
    checked = report.checked
    ledger = report.ledger if report.ledger != "in-process" else \
        "in-process, this process's own: the embedded server's counters live in the server"
    return (f"OK{f' after {repairs} fix(es)' if repairs else ''}: the ledger's counters match the usage records "
            f"({checked['ledger_counters']} held, {checked['budgets']} budget(s)), no answer running past the "
            f"reservation TTL ({checked['running_messages']} running), every usage record audited "
            f"({checked['usage_records']}), no expired reservation (ledger: {ledger}).")

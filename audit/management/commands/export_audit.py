import datetime as dt
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime

from audit import actions, queries
from audit.export import iter_csv, iter_jsonl
from audit.models import AuditEvent
from audit.services import record


def moment(value: str) -> dt.datetime:
    """ISO 8601 date or datetime; naive means UTC."""
    try:
        parsed = parse_datetime(value)
        if parsed is None and (day := parse_date(value)) is not None:
            parsed = dt.datetime.combine(day, dt.time())
    except ValueError:
        parsed = None
    if parsed is None:
        raise CommandError(f"{value!r} is not an ISO 8601 date or datetime.")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class Command(BaseCommand):
    help = "Export audit events (all organizations) as JSON lines or CSV, oldest first."

    def add_arguments(self, parser):
        parser.add_argument("--since", type=str, help="ISO date/datetime, inclusive.")
        parser.add_argument("--until", type=str, help="ISO date/datetime, exclusive.")
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--output", help="File to write (default: standard output).")

    def handle(self, *args, since, until, format, output, **options):
        since, until = (moment(since) if since else None), (moment(until) if until else None)
        try:
            queries.check_range(since, until, cap=False)  # an operator archiving years at once is fine
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        events = queries.filter_events(AuditEvent.objects.all(), since=since, until=until).order_by("sequence")
        lines = (iter_csv if format == "csv" else iter_jsonl)(events.iterator(chunk_size=1000))
        stream = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            count = sum(1 for line in lines if stream.write(line) is not None)
        finally:
            if output:
                stream.close()
        record(actions.DATA_EXPORTED, resource="audit_events",
               metadata={"format": format, "command": "export_audit", "since": since, "until": until,
                         "output": output or "stdout"})
        if output:
            self.stderr.write(f"Wrote {count - (format == 'csv')} events to {output}.")

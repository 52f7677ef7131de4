import sys

from django.core.management.base import BaseCommand, CommandError

from training import exports, services
from training.actions.exports import export_version
from training.models import DatasetVersion


class Command(BaseCommand):
    help = "Write a built dataset version in a training format (JSONL); audited as data.exported."

    def add_arguments(self, parser):
        parser.add_argument("version_id", type=int)
        parser.add_argument("--format", choices=exports.FORMATS, default="chat")
        parser.add_argument("--split", choices=exports.SPLITS, default="all")
        parser.add_argument("--output", help="File to write (default: standard output).")

    def handle(self, *args, version_id, format, split, output, **options):
        version = DatasetVersion.objects.filter(pk=version_id).first()
        if version is None:
            raise CommandError(f"There is no dataset version {version_id}.")
        try:
            lines = export_version(version, actor=None, fmt=format, split=split)
        except (services.NotDownloadable, services.ConsentRequired) as error:
            raise CommandError(str(error)) from None
        stream = open(output, "w", encoding="utf-8") if output else sys.stdout
        try:
            count = sum(1 for line in lines if stream.write(line) is not None)
        finally:
            if output:
                stream.close()
        if output:
            self.stderr.write(f"Wrote {count} {format} lines to {output}.")

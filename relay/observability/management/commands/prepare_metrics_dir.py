from django.core.management.base import BaseCommand, CommandError

from relay.observability import multiproc


class Command(BaseCommand):
    help = ("Create or empty this instance's PROMETHEUS_MULTIPROC_DIR before its workers start "
            "(removes only *.db metric files). Run it once per instance start, never while workers run.")

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="the directory (default: $PROMETHEUS_MULTIPROC_DIR)")

    def handle(self, *args, path=None, **options):
        path = path or multiproc.directory()
        if not path:
            raise CommandError("Give a directory or set PROMETHEUS_MULTIPROC_DIR.")
        removed = multiproc.prepare_directory(path)
        self.stdout.write(f"metrics directory {path} ready ({removed} stale file(s) removed)")

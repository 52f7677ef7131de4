from django.core.management.base import BaseCommand, CommandError

from training import services
from training.actions.builds import request_build, run_build
from training.models import Dataset, DatasetVersion


class Command(BaseCommand):
    help = "Build a new version of a dataset now, in this process; prints progress and the content hash."

    def add_arguments(self, parser):
        parser.add_argument("dataset_id", type=int)

    def handle(self, *args, dataset_id, **options):
        dataset = Dataset.objects.filter(pk=dataset_id).first()
        if dataset is None:
            raise CommandError(f"There is no dataset {dataset_id}.")
        try:
            version = request_build(dataset, actor=None, enqueue=False)
        except services.ConsentRequired as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Building version {version.number} (id {version.pk}) of {dataset.name!r}.")
        version = run_build(version.pk, on_progress=lambda v: self.stdout.write(f"  {v.processed}/{v.total}"))
        if version.state != DatasetVersion.State.DONE:
            raise CommandError(f"The build failed: {version.message}")
        self.stdout.write(f"  {version.processed}/{version.total}")
        if version.message:
            self.stdout.write(version.message)
        self.stdout.write(f"rows {version.rows} (train {version.train_rows}, validation {version.validation_rows}); "
                          f"duplicates removed: {version.exact_duplicates} exact, {version.near_duplicates} near; "
                          f"redactions: {sum(version.redactions.values())}")
        self.stdout.write(f"sha256 {version.content_sha256}")

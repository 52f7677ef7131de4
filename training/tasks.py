"""Background work of training: building a dataset version."""

from celery import shared_task


@shared_task(ignore_result=True)
def build_version(version_id: int) -> None:
    from training.actions.builds import run_build

    run_build(version_id)

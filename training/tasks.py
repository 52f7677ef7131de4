"""Background work of training: building a dataset version."""

from celery import shared_task


@shared_task(ignore_result=True)
def build_version(version_id: int) -> None:
    from training.actions.builds import run_build

    run_build(version_id)


@shared_task(ignore_result=True)
def run_evaluation_task(evaluation_id: int) -> None:
    from training.actions.evaluations import run_evaluation

    run_evaluation(evaluation_id)

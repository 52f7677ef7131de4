"""Dataset definitions: created whole (a changed definition is a new dataset), deleted with their versions."""

from __future__ import annotations

from django.db import transaction

from accounts.models import Organization, User
from audit import actions
from audit.services import record
from training import storage
from training.models import Dataset

FILTER_FIELDS = ("agents", "model_names", "users", "teams", "start", "end", "min_quality", "feedback", "statuses",
                 "include_cached", "include_failed", "include_evaluation", "validation_percent")


@transaction.atomic
def create_dataset(organization: Organization, *, actor: User | None, name: str, description: str = "",
                   **filters) -> Dataset:
    """filters: FILTER_FIELDS, validated by the caller (training.api.serializers.DatasetSerializer)."""
    unknown = set(filters) - set(FILTER_FIELDS)
    if unknown:
        raise TypeError(f"unknown filters: {sorted(unknown)}")
    dataset = Dataset.objects.create(organization=organization, created_by=actor, name=name,
                                     description=description, **filters)
    record(actions.DATASET_CREATED, actor=actor, organization=organization.pk, resource=f"dataset:{dataset.pk}",
           metadata={"name": name})
    return dataset


def delete_dataset(dataset: Dataset, *, actor: User | None) -> None:
    """Its versions go with it; their files are removed once the deletion has committed."""
    files = [name for name in dataset.versions.values_list("file_name", flat=True) if name]
    with transaction.atomic():
        resource, organization = f"dataset:{dataset.pk}", dataset.organization_id
        metadata = {"name": dataset.name, "versions": dataset.versions.count()}
        dataset.delete()
        record(actions.DATASET_DELETED, actor=actor, organization=organization, resource=resource,
               metadata=metadata)
        transaction.on_commit(lambda: [storage.remove(name) for name in files])

"""A download of a built version: refused when withdrawn or while consent is off, audited as data.exported."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import transaction

from accounts.models import User
from audit import actions
from audit.services import record
from training import exports, services
from training.models import DatasetVersion


@transaction.atomic
def export_version(version: DatasetVersion, *, actor: User | None, fmt: str, split: str = "all") -> Iterator[str]:
    """The lines of the export (a generator that reads the file as it is consumed).

    services.NotDownloadable for a withdrawn or unbuilt version, services.ConsentRequired while the
    organization's consent is off; ValueError for an unknown format.
    """
    if fmt not in exports.FORMATS or split not in exports.SPLITS:
        raise ValueError(f"format is one of {exports.FORMATS}, split one of {exports.SPLITS}")
    version = services.downloadable(DatasetVersion.objects.select_for_update().select_related("dataset").get(
        pk=version.pk))
    record(actions.DATA_EXPORTED, actor=actor, organization=version.dataset.organization_id,
           resource=f"dataset_version:{version.pk}",
           metadata={"format": fmt, "split": split, "dataset": version.dataset_id, "rows": version.rows,
                     "content_sha256": version.content_sha256})
    return exports.lines(version, fmt, split)

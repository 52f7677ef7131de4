"""Where built versions' files live: RELAY_TRAINING_DIR (default MEDIA_ROOT/training)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


def root() -> Path:
    configured = getattr(settings, "RELAY_TRAINING_DIR", None)
    return Path(configured) if configured else Path(settings.MEDIA_ROOT) / "training"


def path(name: str) -> Path:
    """The file of a stored name; a name is never a path of its own (no separators)."""
    if not name or os.sep in name or "/" in name or name.startswith("."):
        raise ValueError(f"not a stored file name: {name!r}")
    return root() / name


def remove(name: str) -> None:
    try:
        path(name).unlink()
    except (FileNotFoundError, ValueError):
        pass

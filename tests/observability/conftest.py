"""Helpers for reading Prometheus exposition text in tests."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

METRICS_TOKEN = "scrape-token-for-tests-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset(labels.items())): value} for every sample in the text."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series_of(text: str, name: str) -> list[dict]:
    return [dict(labels) for sample_name, labels in samples(text) if sample_name == name]


def value(text: str, name: str, **labels) -> float:
    """Sum of the samples called name whose labels include labels (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (sample_name, have), v in samples(text).items() if sample_name == name and wanted <= have)


@pytest.fixture
def metrics_token(settings):
    settings.RELAY_METRICS_TOKEN = METRICS_TOKEN
    return METRICS_TOKEN

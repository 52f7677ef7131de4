import os

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "relay.observability"
    label = "observability"
    verbose_name = "Observability"

    def ready(self):
        # prometheus_client writes one file per process and metric type into this directory; a
        # worker started before the directory exists would fail on its first metric update.
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            os.makedirs(directory, exist_ok=True)

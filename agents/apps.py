from django.apps import AppConfig


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "agents"

    def ready(self):
        from django.db.models.signals import post_delete, post_migrate, post_save

        import agents.checks  # noqa: F401  (register the system checks)
        import agents.jobs  # noqa: F401  (registers the periodic jobs with relay.periodic)
        import agents.kinds  # noqa: F401  (register the agents now, not on the first request)
        from agents.documents import load_builtin_docs
        from agents.metrics import register as register_metric_labels
        from agents.models import ModelEndpoint
        from agents.providers.catalog import forget_catalog

        register_metric_labels()
        post_migrate.connect(load_builtin_docs, sender=self)
        post_save.connect(forget_catalog, sender=ModelEndpoint)
        post_delete.connect(forget_catalog, sender=ModelEndpoint)

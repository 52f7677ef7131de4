from django.apps import AppConfig


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "agents"

    def ready(self):
        from django.db.models.signals import post_delete, post_migrate, post_save

        import agents.checks  # noqa: F401  (register the system checks)
        import agents.jobs  # noqa: F401  (registers the periodic jobs with relay.periodic)
        import agents.kinds  # noqa: F401  (register the agents now, not on the first request)
        from accounts import scoping
        from agents.actions.documents import load_builtin_docs
        from agents.documents import DOCUMENT_RULE
        from agents.metrics import register as register_metric_labels
        from agents.models import Conversation, Document, Message, ModelDeployment, ModelEndpoint
        from agents.optimizer import forget_settings
        from agents.providers.catalog import close_providers, forget_catalog
        from billing.models import OptimizerSettings
        from relay.health import on_shutdown

        scoping.register(Document, DOCUMENT_RULE)
        # Personal, even to superusers; the admin console shows an organization's admins their metadata.
        scoping.register(Conversation, scoping.Rule(owner="user", administered_by="organization"))
        scoping.register(Message, scoping.Rule(owner="conversation__user"))

        register_metric_labels()
        on_shutdown(close_providers)
        post_migrate.connect(load_builtin_docs, sender=self)
        for model in (ModelEndpoint, ModelDeployment):
            post_save.connect(forget_catalog, sender=model)
            post_delete.connect(forget_catalog, sender=model)
            scoping.register(model, scoping.Rule(platform=True))  # the platform's, not any organization's
        # The optimizer's switches are billing's model (no data migration); the optimizer is here.
        post_save.connect(forget_settings, sender=OptimizerSettings)
        post_delete.connect(forget_settings, sender=OptimizerSettings)

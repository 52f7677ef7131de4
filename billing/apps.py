from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self):
        from django.db.models.signals import post_delete, post_migrate, post_save

        import billing.jobs  # noqa: F401  (registers the periodic jobs with relay.periodic)
        from accounts.models import Organization
        from billing.metrics import register as register_metrics
        from billing.models import Budget, ModelPrice, OptimizerSettings
        from billing.optimizer import forget_settings
        from billing.pricing import ensure_default_prices
        from billing.rule_cache import RULES

        register_metrics()
        post_migrate.connect(ensure_default_prices, sender=self)
        post_save.connect(forget_settings, sender=OptimizerSettings)
        post_delete.connect(forget_settings, sender=OptimizerSettings)
        # Organization: its time zone sets the budgets' periods.
        for model in (Budget, ModelPrice, Organization):
            post_save.connect(RULES.bump, sender=model, dispatch_uid=f"rules-{model.__name__}-save")
            post_delete.connect(RULES.bump, sender=model, dispatch_uid=f"rules-{model.__name__}-delete")

from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self):
        from django.db.models.signals import post_delete, post_migrate, post_save

        from billing.models import OptimizerSettings
        from billing.optimizer import forget_settings
        from billing.pricing import ensure_default_prices

        post_migrate.connect(ensure_default_prices, sender=self)
        post_save.connect(forget_settings, sender=OptimizerSettings)
        post_delete.connect(forget_settings, sender=OptimizerSettings)

from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self):
        from django.db.models.signals import post_migrate

        from billing.pricing import ensure_default_prices

        post_migrate.connect(ensure_default_prices, sender=self)

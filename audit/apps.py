from django.apps import AppConfig


class AuditConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self):
        import audit.jobs  # noqa: F401  (registers the periodic jobs with relay.periodic)
        from audit import celery_context, signals

        signals.connect()
        celery_context.connect()

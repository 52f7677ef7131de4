from django.apps import AppConfig


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "agents"

    def ready(self):
        from django.db.models.signals import post_migrate

        from agents.documents import load_builtin_docs

        post_migrate.connect(load_builtin_docs, sender=self)

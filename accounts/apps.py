from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self):
        from django.db.models.signals import post_migrate

        from accounts import scoping, signals  # noqa: F401
        from accounts.roles import ensure_roles
        from relay.api.errors import add_error_listener

        post_migrate.connect(ensure_roles, sender=self)
        scoping.register_accounts_rules()
        add_error_listener(scoping.on_api_error)

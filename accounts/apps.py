from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self):
        import rest_framework.views  # noqa: F401  (first: relay.api.errors imported alone is a circular import)
        from django.db.models.signals import post_migrate

        from accounts import scoping, signals  # noqa: F401
        from accounts.admission import HTTPCredential, admit, admit_on_loop
        from accounts.roles import ensure_roles
        from relay.api.async_views import register_admission
        from relay.api.errors import add_error_listener

        post_migrate.connect(ensure_roles, sender=self)
        scoping.register_accounts_rules()
        add_error_listener(scoping.on_api_error)
        # The async API views (relay.api.async_views) admit requests by accounts' rule.
        register_admission(lambda request, requirement, throttle: admit(
            HTTPCredential(request), requirement, throttle=throttle),
            on_loop=admit_on_loop)

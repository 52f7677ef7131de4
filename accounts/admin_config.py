"""Django's admin app on Relay's site (its own module: accounts.apps must hold one AppConfig)."""

from django.contrib.admin.apps import AdminConfig


class RelayAdminConfig(AdminConfig):
    """Two kinds of staff, every registered model behind the scoping gate (accounts/admin_site.py)."""

    default_site = "accounts.admin_site.RelayAdminSite"

from django.apps import AppConfig


def register_rules() -> None:
    """Billing's rows belong to an organization: its members see them through the one gate."""
    from accounts import scoping
    from billing.models import Budget, BudgetAlert, OptimizerSettings, UsageRecord

    for model, path in ((Budget, "organization"), (BudgetAlert, "budget__organization"),
                        (OptimizerSettings, "organization")):
        scoping.register(model, scoping.Rule(organization=path))
    scoping.register(UsageRecord, scoping.Rule(organization="organization", owner="user"))


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self):
        from django.db.models.signals import post_delete, post_migrate, post_save

        import billing.jobs  # noqa: F401  (registers the periodic jobs with relay.periodic)
        from accounts import key_tree
        from accounts.models import Organization
        from billing.budgets import hard_key_budgets
        from billing.metrics import register as register_metrics
        from billing.models import Budget, ModelPrice
        from billing.pricing import ensure_default_prices
        from billing.rule_cache import RULES

        register_metrics()
        register_rules()
        post_migrate.connect(ensure_default_prices, sender=self)
        key_tree.register_binding(hard_key_budgets)  # a key minted under a budgeted key stays under it
        # Organization: its time zone sets the budgets' periods.
        for model in (Budget, ModelPrice, Organization):
            post_save.connect(RULES.bump, sender=model, dispatch_uid=f"rules-{model.__name__}-save")
            post_delete.connect(RULES.bump, sender=model, dispatch_uid=f"rules-{model.__name__}-delete")

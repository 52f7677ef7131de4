from django import forms
from django.contrib import admin, messages
from django.db import models

from accounts.admin_site import MANAGE, READ
from accounts.roles import AGENT_PERMISSIONS
from billing.actions import budgets, optimizer_settings, prices
from billing.forms import MONEY_FORM_FIELDS, money_column
from billing.models import Budget, BudgetAlert, ModelPrice, OptimizerSettings, ToolUsage, UsageRecord
from relay.admin_actions import ActionsAdmin
from relay.admin_lists import CappedCountPaginator, choices_filter


@admin.register(ModelPrice)
class ModelPriceAdmin(ActionsAdmin):
    """A price change is a new row with a later effective_from; past usage keeps its row."""

    list_display = ["model", money_column("input_per_1k", exact=True, description="input per 1k"),
                    money_column("output_per_1k", exact=True, description="output per 1k"), "effective_from",
                    "created_at"]
    formfield_overrides = {models.DecimalField: MONEY_FORM_FIELDS}
    list_filter = ["model"]
    search_fields = ["model"]
    date_hierarchy = "effective_from"
    save_action, delete_action = prices.save_price, prices.delete_price

    def get_readonly_fields(self, request, obj=None):
        # Rows already charged against are history: editing them would rewrite past costs.
        if obj is not None and obj.usage.exists():
            return ["model", "input_per_1k", "output_per_1k", "effective_from"]
        return []

    def has_delete_permission(self, request, obj=None):
        return obj is None or not obj.usage.exists()


class ToolUsageInline(admin.TabularInline):
    model = ToolUsage
    extra = 0
    can_delete = False
    readonly_fields = ["tool", "duration_ms", "tokens", "cost"]

    def has_add_permission(self, request, obj=None):
        return False


def _agent_names():
    return sorted(AGENT_PERMISSIONS)  # every agent has its entry (agents.registry.register insists)


def _model_names():
    return list(ModelPrice.objects.order_by("model").values_list("model", flat=True).distinct())


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    org_admin_access = READ
    list_display = ["created_at", "organization", "user", "agent", "model", "input_tokens", "output_tokens",
                    money_column("cost"), "status", "cached", "latency_ms"]
    # Fixed choices and relative dates: no filter scans the table to draw itself (relay/admin_lists.py).
    list_filter = [choices_filter("status", "status", [s for s, _ in UsageRecord.STATUS_CHOICES]),
                   choices_filter("agent", "agent", _agent_names), choices_filter("model", "model", _model_names),
                   "cached", "created_at", "organization"]
    list_select_related = ["organization", "user"]
    search_fields = ["request_id"]  # exact, on its unique index: see get_search_results
    search_help_text = "A request id (X-Request-ID)."
    # Newest first by primary key: the index serves it; created_at has no index of its own.
    ordering = ["-id"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50  # rendering rows, not SQL, is most of a page's time
    raw_id_fields = ["user", "api_key", "team", "price"]
    inlines = [ToolUsageInline]

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(request_id=term) if term else queryset), False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class BudgetForm(forms.ModelForm):
    def clean(self):
        """A new budget, or one moved to another organization, within the cap of budgets per
        organization (billing.actions.budgets; checked again, locked, when it is saved)."""
        cleaned = super().clean()
        organization = cleaned.get("organization")
        if organization is not None and (self.instance.pk is None or "organization" in self.changed_data):
            problem = budgets.budget_room_problem(organization.pk)
            if problem:
                raise forms.ValidationError(problem, code="too_many_budgets")
        return cleaned


@admin.register(Budget)
class BudgetAdmin(ActionsAdmin):
    org_admin_access = MANAGE
    form = BudgetForm
    list_display = ["__str__", "organization", "scope", "team", "user", "api_key", "period",
                    money_column("limit_usd", description="limit"), "hard", "updated_at"]
    list_filter = ["scope", "period", "hard", "organization"]
    list_select_related = ["organization", "team", "user", "api_key"]
    raw_id_fields = ["team", "user", "api_key", "created_by"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    formfield_overrides = {models.DecimalField: MONEY_FORM_FIELDS}

    delete_action = budgets.delete_budget

    def save_model(self, request, obj, form, change):
        if not budgets.save_budget(obj, actor=request.user):
            messages.warning(request, "Saved, but the ledger is unreachable: run `manage.py rebuild_ledger`.")


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ActionsAdmin):
    org_admin_access = MANAGE  # deleted to fire again; never added or edited
    list_display = ["budget", "period_key", "threshold", money_column("spent_usd", description="spent"), "created_at"]
    list_filter = ["threshold", "created_at"]
    list_select_related = ["budget", "budget__organization"]
    readonly_fields = ["budget", "period_key", "threshold", "spent_usd", "created_at"]
    delete_action = budgets.delete_budget_alert

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # an alert is a fact: it can be deleted (to fire again), not edited


@admin.register(OptimizerSettings)
class OptimizerSettingsAdmin(ActionsAdmin):
    """Turn each cost-optimizer strategy off (or tune it) for one organization."""

    org_admin_access = MANAGE

    list_display = ["organization", "routing_enabled", "cache_enabled", "cache_ttl_seconds", "trimming_enabled",
                    "history_token_budget", "updated_at"]
    list_filter = ["routing_enabled", "cache_enabled", "trimming_enabled"]
    raw_id_fields = ["organization"]
    save_action = optimizer_settings.save_optimizer_settings
    delete_action = optimizer_settings.delete_optimizer_settings

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.utils.functional import cached_property

from billing.models import Budget, BudgetAlert, ModelPrice, ToolUsage, UsageRecord


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """A price change is a new row with a later effective_from; past usage keeps its row."""

    list_display = ["model", "input_per_1k", "output_per_1k", "effective_from", "created_at"]
    list_filter = ["model"]
    search_fields = ["model"]
    date_hierarchy = "effective_from"

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


class EstimatedCountPaginator(Paginator):
    """COUNT(*) over 100k+ filtered rows is the slow part of a changelist; cap the exact count."""

    @cached_property
    def count(self):
        return self.object_list[:100_001].count()


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "organization", "user", "agent", "model", "input_tokens", "output_tokens", "cost",
                    "status", "cached", "latency_ms"]
    list_filter = ["status", "agent", "model", "cached", "created_at", "organization"]
    list_select_related = ["organization", "user"]
    search_fields = ["request_id"]  # exact-ish, indexed (unique); free text over users would scan
    date_hierarchy = "created_at"
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    raw_id_fields = ["user", "api_key", "team", "price"]
    inlines = [ToolUsageInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["__str__", "organization", "scope", "team", "user", "api_key", "period", "limit_usd", "hard",
                    "updated_at"]
    list_filter = ["scope", "period", "hard", "organization"]
    list_select_related = ["organization", "team", "user", "api_key"]
    raw_id_fields = ["team", "user", "api_key", "created_by"]
    readonly_fields = ["created_by", "created_at", "updated_at"]

    def save_model(self, request, obj, form, change):
        from billing.budget_changes import budget_changed
        from billing.ledger import LedgerUnavailable

        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        try:
            budget_changed(obj)  # period or limit changed: recompute the counter from records
        except LedgerUnavailable:
            messages.warning(request, "Saved, but the ledger is unreachable: run `manage.py rebuild_ledger`.")


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ["budget", "period_key", "threshold", "spent_usd", "created_at"]
    list_filter = ["threshold", "created_at"]
    list_select_related = ["budget", "budget__organization"]
    readonly_fields = ["budget", "period_key", "threshold", "spent_usd", "created_at"]

    def has_add_permission(self, request):
        return False

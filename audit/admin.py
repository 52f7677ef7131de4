"""The trail in the admin: read-only, fast on large tables."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import OuterRef, Subquery

from audit import actions
from audit.actions import STATUSES
from audit.models import AuditCheckpoint, AuditEvent, AuditHeadCheckpoint
from relay.admin_lists import CappedCountPaginator, choices_filter

# Through the trail's own relations: audit sits below accounts and imports none of its modules.
User = get_user_model()
Organization = AuditEvent._meta.get_field("organization").related_model
ACTION_NAMES = sorted({v for k, v in vars(actions).items() if k.isupper() and isinstance(v, str) and "." in v})


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RecordedOrganizationFilter(admin.SimpleListFilter):
    """By the organization the event was recorded for (hashed), not the pointer beside it."""

    title = "organization"
    parameter_name = "organization__id__exact"  # the related-field filter's, so existing links keep working

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in Organization.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        # Not an id (or past bigint): nothing matches, rather than a database error.
        return queryset.filter(organization_ref=int(value)) if value.isdigit() and len(value) < 19 else queryset.none()


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    org_admin_access = "read"  # accounts.admin_site.READ (audit imports no accounts module)
    list_display = ["sequence", "time", "actor_name", "api_key_prefix", "recorded_organization", "action", "status",
                    "resource", "ip", "request_id"]
    # Fixed choices and relative dates: no filter or date drill-down scans the table to draw itself.
    list_filter = [("time", admin.DateFieldListFilter), choices_filter("action", "action", ACTION_NAMES),
                   choices_filter("status", "status", STATUSES), RecordedOrganizationFilter]
    search_help_text = "An actor's username, a request id, a resource (e.g. api_key:7) or an API key prefix."
    search_fields = ["=request_id"]  # get_search_results: each term uses an index or an exact match
    # The unique index on sequence serves this ordering; counts stop at 10,000 on big tables.
    ordering = ["-sequence"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50  # rendering rows, not SQL, is most of a page's time
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def get_queryset(self, request):
        name = Organization.objects.filter(pk=OuterRef("organization_ref")).values("name")[:1]
        return super().get_queryset(request).annotate(organization_name=Subquery(name))

    @admin.display(description="organization")
    def recorded_organization(self, event):
        return event.organization_name or event.organization_ref or "-"

    def get_search_results(self, request, queryset, search_term):
        """One indexed (or exact) match per kind of term, never a LIKE scan of the whole trail."""
        term = search_term.strip()
        if not term:
            return queryset, False
        actors = list(User.objects.filter(username__iexact=term).values_list("pk", flat=True)[:5])
        if actors:
            return queryset.filter(actor_ref__in=actors), False  # who was recorded, not the pointer
        if term.startswith("rk_"):
            return queryset.filter(api_key_prefix=term.removeprefix("rk_").rstrip("…")), False
        if ":" in term:
            return queryset.filter(resource=term), False
        return queryset.filter(request_id=term), False


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ["last_sequence", "pruned_count", "pruned_before", "created_at"]
    readonly_fields = [f.name for f in AuditCheckpoint._meta.fields]


@admin.register(AuditHeadCheckpoint)
class AuditHeadCheckpointAdmin(ReadOnlyAdmin):
    list_display = ["sequence", "hash", "created_at"]
    ordering = ["-sequence", "-created_at"]
    show_full_result_count = False
    paginator = CappedCountPaginator  # one row every RELAY_AUDIT_CHECKPOINT_SECONDS adds up
    readonly_fields = [f.name for f in AuditHeadCheckpoint._meta.fields]

"""The trail in the admin: read-only, fast on large tables."""

from django.contrib import admin

from audit.models import AuditCheckpoint, AuditEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["sequence", "time", "actor_name", "api_key_prefix", "organization", "action", "status",
                    "resource", "ip", "request_id"]
    list_filter = ["action", "status", "organization"]
    list_select_related = ["organization"]
    search_fields = ["actor_name", "resource", "=request_id"]
    date_hierarchy = "time"
    # The unique index on sequence serves this ordering; and no second COUNT(*) on big tables.
    ordering = ["-sequence"]
    show_full_result_count = False
    list_per_page = 100
    readonly_fields = [f.name for f in AuditEvent._meta.fields]


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ["last_sequence", "pruned_count", "pruned_before", "created_at"]
    readonly_fields = [f.name for f in AuditCheckpoint._meta.fields]

"""Training in the admin: read-only. Every change goes through the API (training.actions), audited there."""

from django.contrib import admin

from accounts.admin_site import READ
from training.models import ConversationExclusion, Dataset, DatasetVersion, TrainingConsent


class ReadOnlyAdmin(admin.ModelAdmin):
    """Organization admins read their organization's rows; nobody adds, edits or deletes them here."""

    org_admin_access = READ

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TrainingConsent)
class TrainingConsentAdmin(ReadOnlyAdmin):
    list_display = ["organization", "enabled", "changed_by", "changed_at"]


@admin.register(ConversationExclusion)
class ConversationExclusionAdmin(ReadOnlyAdmin):
    list_display = ["conversation", "reason", "excluded_by", "created_at"]
    list_filter = ["reason"]


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ["name", "organization", "created_by", "created_at"]
    search_fields = ["name"]


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = ["dataset", "number", "state", "processed", "total", "rows", "content_sha256", "withdrawn_at",
                    "created_at"]
    list_filter = ["state"]

from training import admin_evaluation  # noqa: E402,F401  (evaluations, registered read-only)

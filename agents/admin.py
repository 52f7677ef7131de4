"""Agents in the admin: conversations and messages (read-mostly), documents, model endpoints."""

from django.contrib import admin

from agents.models import Conversation, Document, Message, ModelEndpoint


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = ["created_at", "role", "status", "model", "input_tokens", "output_tokens", "cost", "content"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    """History is evidence: it can be read and deleted (privacy requests), not rewritten."""

    list_display = ["__str__", "user", "organization", "agent", "updated_at"]
    list_filter = ["agent", "organization"]
    list_select_related = ["user", "organization"]
    search_fields = ["title", "=user__username"]
    date_hierarchy = "updated_at"
    show_full_result_count = False
    readonly_fields = ["id", "organization", "user", "title", "agent", "created_at", "updated_at"]
    inlines = [MessageInline]

    def has_add_permission(self, request):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "conversation_title", "role", "agent", "model", "status", "input_tokens",
                    "output_tokens", "cost", "feedback"]
    list_filter = ["status", "role", "agent"]
    list_select_related = ["conversation"]
    search_fields = ["=request_id", "=conversation__id"]
    show_full_result_count = False
    readonly_fields = [f.name for f in Message._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_title(self, obj):
        return str(obj.conversation)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["__str__", "kind", "size", "owner", "organization", "builtin", "created_at"]
    list_filter = ["kind", "builtin", "organization"]
    list_select_related = ["owner", "organization"]
    search_fields = ["name", "title", "=sha256"]
    readonly_fields = ["name", "kind", "size", "sha256", "builtin", "created_at"]
    raw_id_fields = ["owner"]

    def has_add_permission(self, request):
        return False  # uploads go through /api/v1/documents/ (type and size checks, chunking)


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = ["name", "provider_kind", "tier", "base_url", "upstream_model", "supports_tools", "enabled"]
    list_filter = ["provider_kind", "tier", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["name", "upstream_model"]

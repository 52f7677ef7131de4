"""Agents in the admin: conversations and messages (read-mostly), documents, models and their deployments.

Every change goes through agents.actions, which records its event beside the admin's own
admin.action; bulk deletes go one object at a time for the same reason.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import FilteredSelectMultiple

from accounts import scoping
from accounts.admin_site import MANAGE, READ
from accounts.models import Team, User
from agents.actions import conversations, endpoints
from agents.actions import documents as document_actions
from agents.models import Conversation, Document, Message, ModelDeployment, ModelEndpoint
from billing.forms import money_column
from relay.admin_actions import ActionsAdmin


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
class ConversationAdmin(ActionsAdmin):
    """History is evidence: it can be read and deleted (privacy requests), not rewritten.

    An organization's admins read its conversations' metadata; the messages are their authors'."""

    org_admin_access = READ

    list_display = ["__str__", "user", "organization", "agent", "updated_at"]
    list_filter = ["agent", "organization"]
    list_select_related = ["user", "organization"]
    search_fields = ["title", "=user__username"]
    date_hierarchy = "updated_at"
    show_full_result_count = False
    readonly_fields = ["id", "organization", "user", "title", "agent", "pinned", "created_at", "updated_at"]
    inlines = [MessageInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):  # every field is read-only: a "save" would change nothing
        return False

    delete_action = conversations.delete_conversation


@admin.register(Message)
class MessageAdmin(ActionsAdmin):
    list_display = ["created_at", "conversation_title", "role", "agent", "model", "status", "input_tokens",
                    "output_tokens", money_column("cost"), "feedback"]
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

    delete_action = conversations.delete_message


def _shares_field(queryset, name: str, initial) -> forms.ModelMultipleChoiceField:
    return forms.ModelMultipleChoiceField(queryset=queryset, required=False, initial=initial,
                                          widget=FilteredSelectMultiple(name, is_stacked=False))


@admin.register(Document)
class DocumentAdmin(ActionsAdmin):
    """Title, owner and shares of an organization's documents; uploads go through the API."""

    org_admin_access = MANAGE
    list_display = ["__str__", "kind", "size", "owner", "organization", "builtin", "created_at"]
    list_filter = ["kind", "builtin", "organization"]
    list_select_related = ["owner", "organization"]
    search_fields = ["name", "title", "=sha256"]
    readonly_fields = ["name", "kind", "size", "sha256", "builtin", "created_at"]
    raw_id_fields = ["owner"]
    delete_action = document_actions.delete_document

    def has_add_permission(self, request):
        return False  # uploads go through /api/v1/documents/ (type and size checks, chunking)

    def get_form(self, request, obj=None, **kwargs):
        if kwargs.get("fields"):  # the fieldsets name the share fields; the model has no such fields
            kwargs["fields"] = [name for name in kwargs["fields"] if name not in ("shared_users", "shared_teams")]
        form = super().get_form(request, obj, **kwargs)
        if obj is None or obj.organization_id is None:
            return form
        # Whom it is shared with: members and teams of its organization, through the gate. Fields
        # made for this request (a form class's fields are shared by every request).
        users, teams = document_actions.shares_of(obj)
        members = scoping.restrict(User, request.user, None, scoping.ADMINISTER).filter(organization=obj.organization_id)
        groups = scoping.restrict(Team, request.user, None, scoping.ADMINISTER).filter(organization=obj.organization_id)
        return type(form.__name__, (form,), {"shared_users": _shares_field(members, "users", users),
                                             "shared_teams": _shares_field(groups, "teams", teams)})

    def save_model(self, request, obj, form, change):
        shares = None
        if "shared_users" in form.cleaned_data:
            shares = form.cleaned_data["shared_users"], form.cleaned_data["shared_teams"]
        document_actions.save_document_edit(obj, actor=request.user, shares=shares)


UNPRICED_LIST = ("Served without a price in effect: {names}. Requests naming them fail with 400 and they are "
                 "never the default model; add a price under Billing > Model prices, or disable them.")
UNPRICED_PAGE = ("This model is served but has no price in effect: requests naming it fail with 400 and it is "
                 "never the default model. Add a price under Billing > Model prices, or disable it.")
UNSERVED_PAGE = "This model has no enabled deployment: it is not offered to clients until one is added or enabled."


class NameListField(forms.CharField):
    """A list of model names, typed as "a, b" (the JSON field's widget would ask for ["a", "b"])."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        if isinstance(value, list):
            return value
        return [name for name in (part.strip() for part in (value or "").replace("\n", ",").split(",")) if name]


class ModelEndpointForm(forms.ModelForm):
    fallbacks = NameListField(required=False, max_length=1000, help_text=ModelEndpoint._meta.get_field(
        "fallbacks").help_text + " Comma-separated, in order.")


class ModelDeploymentInline(admin.TabularInline):
    model = ModelDeployment
    fields = ["name", "base_url", "upstream_model", "api_key_env", "weight", "priority", "rpm_limit", "tpm_limit",
              "enabled"]

    def get_extra(self, request, obj=None, **kwargs):
        return 0 if obj is not None and obj.deployments.exists() else 1


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(ActionsAdmin):
    """Models and their deployments: the platform's, for superusers alone (no org_admin_access).

    Saved through agents.actions.endpoints: a new model with the deployments of its inline is one
    model_endpoint.created event; on an existing model each inline row added, changed or deleted
    is one model_deployment.* event beside the model's own model_endpoint.updated. An enabled
    model nobody priced cannot be billed: the list and its page say so (agents.W001)."""

    form = ModelEndpointForm
    inlines = [ModelDeploymentInline]
    list_display = ["name", "provider_kind", "tier", "routing_strategy", "deployment_count", "supports_tools",
                    "enabled", "priced"]
    list_filter = ["provider_kind", "tier", "routing_strategy", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["name", "deployments__upstream_model", "deployments__base_url"]
    fieldsets = [
        (None, {"fields": ["name", "provider_kind", "tier", "supports_tools", "enabled"]}),
        ("Routing", {"fields": ["routing_strategy", "num_retries", "first_token_timeout_seconds", "fallbacks",
                                "context_window_fallback"]}),
        ("Health", {"fields": ["allowed_fails", "failure_window_seconds", "cooldown_seconds"]}),
    ]

    save_action = endpoints.save_endpoint  # an edited model and the list's "enabled" column
    delete_action = endpoints.delete_endpoint

    def save_model(self, request, obj, form, change):
        if change:
            endpoints.save_endpoint(obj, actor=request.user)
        # A new model is saved with its inline's deployments, as one event, in save_related.

    def save_related(self, request, form, formsets, change):
        if change:
            return super().save_related(request, form, formsets, change)
        new = [row for formset in formsets for row in formset.save(commit=False)]
        endpoints.add_endpoint(form.instance, new, actor=request.user)

    def save_formset(self, request, form, formset, change):
        rows = formset.save(commit=False)
        for row in formset.deleted_objects:
            endpoints.delete_deployment(row, actor=request.user)
        for row in rows:
            endpoints.save_deployment(row, actor=request.user)

    def get_queryset(self, request):
        from django.db.models import Count, Exists, OuterRef, Q
        from django.utils import timezone

        from billing.models import ModelPrice

        in_effect = ModelPrice.objects.filter(model=OuterRef("name"), effective_from__lte=timezone.now())
        return super().get_queryset(request).annotate(
            has_price=Exists(in_effect), deployments_total=Count("deployments", distinct=True),
            deployments_enabled=Count("deployments", filter=Q(deployments__enabled=True), distinct=True))

    @admin.display(description="deployments enabled", ordering="deployments_enabled")
    def deployment_count(self, obj) -> str:
        return f"{obj.deployments_enabled} of {obj.deployments_total}"

    @admin.display(boolean=True, description="priced", ordering="has_price")
    def priced(self, obj) -> bool:
        if hasattr(obj, "has_price"):
            return obj.has_price
        from agents.providers.catalog import unpriced_names

        return not unpriced_names([obj.name])

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":
            served = ModelEndpoint.objects.served().values("pk")
            unpriced = list(self.get_queryset(request).filter(has_price=False, pk__in=served)
                            .values_list("name", flat=True))
            if unpriced:
                self.message_user(request, UNPRICED_LIST.format(names=", ".join(unpriced)), messages.WARNING)
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        endpoint = self.get_object(request, object_id) if request.method == "GET" else None
        if endpoint is not None and endpoint.enabled and endpoint.provider_kind != ModelEndpoint.Kind.LOCAL:
            if not ModelEndpoint.objects.served().filter(pk=endpoint.pk).exists():
                self.message_user(request, UNSERVED_PAGE, messages.WARNING)
            elif not self.priced(endpoint):
                self.message_user(request, UNPRICED_PAGE, messages.WARNING)
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(ModelDeployment)
class ModelDeploymentAdmin(ActionsAdmin):
    """Every deployment of every model in one list, to find one by its upstream and switch it off."""

    list_display = ["__str__", "base_url", "upstream_model", "weight", "priority", "rpm_limit", "tpm_limit",
                    "enabled"]
    list_filter = ["enabled", "endpoint"]
    list_editable = ["enabled"]
    list_select_related = ["endpoint"]
    search_fields = ["name", "endpoint__name", "base_url", "upstream_model"]

    save_action = endpoints.save_deployment
    delete_action = endpoints.delete_deployment

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group

from accounts import services
from accounts.models import APIKey, Organization, Team, User
from accounts.roles import role_of


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "time_zone", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "created_at"]
    list_filter = ["organization"]
    list_select_related = ["organization"]
    search_fields = ["name", "organization__name"]


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "organization", "team", "role", "is_active", "is_staff", "last_login"]
    list_filter = ["organization", "groups", "is_active", "is_staff", "is_superuser"]
    list_select_related = ["organization", "team__organization"]  # a team's name shows its organization
    search_fields = ["username", "email", "first_name", "last_name"]
    fieldsets = BaseUserAdmin.fieldsets + (("Relay", {"fields": ("organization", "team")}),)
    add_fieldsets = BaseUserAdmin.add_fieldsets + (("Relay", {"fields": ("email", "organization", "team", "groups")}),)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="role")
    def role(self, obj):
        return role_of(obj)


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys are listed and revoked here; their secrets exist nowhere to show."""

    list_display = ["name", "visible_prefix", "owner", "is_active", "expires_at", "revoked_at", "last_used_at", "created_at"]
    list_filter = ["revoked_at", "owner__organization"]
    list_select_related = ["owner", "owner__organization"]
    search_fields = ["name", "prefix", "owner__username"]
    readonly_fields = ["prefix", "secret_hash", "hash_version", "parent", "last_used_at", "revoked_at", "created_at"]
    exclude = []
    actions = ["revoke_selected"]

    def has_add_permission(self, request):
        return False  # keys are created where the secret can be shown once: /keys/ or the API

    @admin.display(description="prefix")
    def visible_prefix(self, obj):
        return f"rk_{obj.prefix}…"

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request, queryset):
        for key in queryset:
            services.revoke_api_key(key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def get_fields(self, request, obj=None):
        return [f for f in super().get_fields(request, obj) if f != "secret_hash"]


admin.site.site_header = "Relay admin console"
admin.site.site_title = "Relay admin"
admin.site.index_title = "Administration"
_ = Group  # groups/permissions stay registered by django.contrib.auth

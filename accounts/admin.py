"""The admin console for accounts. Every save, delete and action goes through accounts.actions."""

from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.contrib.auth.models import Group
from rest_framework_simplejwt.token_blacklist import admin as token_admin
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken

from accounts.actions import keys, organizations, roles, teams, users
from accounts.models import APIKey, Organization, Team, User
from accounts.roles import role_of
from relay.admin_actions import ActionsAdmin


@admin.register(Organization)
class OrganizationAdmin(ActionsAdmin):
    list_display = ["name", "slug", "time_zone", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    save_action, delete_action = organizations.save_organization, organizations.delete_organization


@admin.register(Team)
class TeamAdmin(ActionsAdmin):
    list_display = ["name", "organization", "created_at"]
    list_filter = ["organization"]
    list_select_related = ["organization"]
    search_fields = ["name", "organization__name"]
    save_action, delete_action = teams.save_team, teams.delete_team


class PasswordForm(AdminPasswordChangeForm):
    def save(self, commit=True):
        usable = self.cleaned_data.get("set_usable_password", True)
        return users.change_password(self.user, self.cleaned_data["password1"] if usable else None)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "organization", "team", "role", "is_active", "is_staff", "last_login"]
    list_filter = ["organization", "groups", "is_active", "is_staff", "is_superuser"]
    list_select_related = ["organization", "team__organization"]  # a team's name shows its organization
    search_fields = ["username", "email", "first_name", "last_name"]
    fieldsets = BaseUserAdmin.fieldsets + (("Relay", {"fields": ("organization", "team")}),)
    add_fieldsets = BaseUserAdmin.add_fieldsets + (("Relay", {"fields": ("email", "organization", "team", "groups")}),)
    change_password_form = PasswordForm

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="role")
    def role(self, obj):
        return role_of(obj)

    def save_model(self, request, obj, form, change):
        pass  # saved with its groups in save_related: the role belongs in the one event

    def save_related(self, request, form, formsets, change):
        base = super().save_related
        users.save_user(form.instance, actor=request.user, save_related=lambda: base(request, form, formsets, change))

    def delete_model(self, request, obj):
        users.delete_user(obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            users.delete_user(user, actor=request.user)


admin.site.unregister(Group)


@admin.register(Group)
class RoleAdmin(BaseGroupAdmin):
    """Roles are groups; their permissions are what every member's keys may do."""

    def save_model(self, request, obj, form, change):
        pass  # saved with its permissions in save_related: they belong in the one event

    def save_related(self, request, form, formsets, change):
        base = super().save_related
        roles.save_role(form.instance, actor=request.user, save_related=lambda: base(request, form, formsets, change))

    def delete_model(self, request, obj):
        roles.delete_role(obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for group in queryset:
            roles.delete_role(group, actor=request.user)


@admin.register(APIKey)
class APIKeyAdmin(ActionsAdmin):
    """Keys are listed and revoked here; their secrets exist nowhere to show."""

    list_display = ["name", "visible_prefix", "owner", "is_active", "expires_at", "revoked_at", "last_used_at", "created_at"]
    list_filter = ["revoked_at", "owner__organization"]
    list_select_related = ["owner", "owner__organization"]
    search_fields = ["name", "prefix", "owner__username"]
    readonly_fields = ["prefix", "secret_hash", "hash_version", "parent", "last_used_at", "revoked_at", "created_at"]
    exclude = []
    actions = ["revoke_selected"]
    save_action, delete_action = keys.save_api_key, keys.delete_api_key

    def has_add_permission(self, request):
        return False  # keys are created where the secret can be shown once: /keys/ or the API

    @admin.display(description="prefix")
    def visible_prefix(self, obj):
        return f"rk_{obj.prefix}…"

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request, queryset):
        for key in queryset:
            keys.revoke_api_key(key, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def get_fields(self, request, obj=None):
        return [f for f in super().get_fields(request, obj) if f != "secret_hash"]


admin.site.unregister(BlacklistedToken)


@admin.register(BlacklistedToken)
class BlacklistedTokenAdmin(token_admin.BlacklistedTokenAdmin):
    """Read only: a refresh token is revoked by signing out or deactivating its user (both audited);
    an unaudited write here would bypass the trail."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False


admin.site.site_header = "Relay admin console"
admin.site.site_title = "Relay admin"
admin.site.index_title = "Administration"

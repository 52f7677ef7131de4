"""The admin console for accounts. Every save, delete and action goes through accounts.actions."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, AdminUserCreationForm, UserChangeForm
from django.contrib.auth.models import Group
from rest_framework_simplejwt.token_blacklist import admin as token_admin
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken

from accounts.actions import keys, organizations, roles, teams, users
from accounts.admin_site import MANAGE, READ, is_platform
from accounts.models import APIKey, Organization, Team, User
from accounts.roles import ROLES, role_of
from relay.admin_actions import ActionsAdmin


@admin.register(Organization)
class OrganizationAdmin(ActionsAdmin):
    list_display = ["name", "slug", "time_zone", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    save_action, delete_action = organizations.save_organization, organizations.delete_organization


@admin.register(Team)
class TeamAdmin(ActionsAdmin):
    org_admin_access = MANAGE
    list_display = ["name", "organization", "created_at"]
    list_filter = ["organization"]
    list_select_related = ["organization"]
    search_fields = ["name", "organization__name"]
    save_action, delete_action = teams.save_team, teams.delete_team


class PasswordForm(AdminPasswordChangeForm):
    def save(self, commit=True):
        usable = self.cleaned_data.get("set_usable_password", True)
        return users.change_password(self.user, self.cleaned_data["password1"] if usable else None)


ROLE_CHOICES = [(role, role.replace("_", " ")) for role in ROLES]


class MemberRoleForm(UserChangeForm):
    """An organization admin's form for a member: the four built-in roles instead of groups and
    permissions; never superuser, staff (it follows the role) or another organization."""

    role = forms.ChoiceField(choices=ROLE_CHOICES)

    class Meta(UserChangeForm.Meta):
        model = User
        fields = ["username", "first_name", "last_name", "email", "is_active", "organization", "team"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and "role" in self.fields:  # not on their own form: shown read-only
            self.fields["role"].initial = role_of(self.instance)


class NewMemberForm(AdminUserCreationForm):
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial="user")

    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ["username", "email", "organization", "team"]


MEMBER_FIELDSETS = (
    (None, {"fields": ("username", "password")}),
    ("Profile", {"fields": ("first_name", "last_name", "email")}),
    ("Membership", {"fields": ("organization", "team", "role", "is_active")}),
    ("Dates", {"fields": ("last_login", "date_joined")}),
)
NEW_MEMBER_FIELDSETS = (
    (None, {"fields": ("username", "usable_password", "password1", "password2")}),
    ("Membership", {"fields": ("email", "organization", "team", "role")}),
)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    org_admin_access = MANAGE
    list_display = ["username", "email", "organization", "team", "role", "is_active", "is_staff", "last_login"]
    list_filter = ["organization", "groups", "is_active", "is_staff", "is_superuser"]
    list_select_related = ["organization", "team__organization"]  # a team's name shows its organization
    search_fields = ["username", "email", "first_name", "last_name"]
    list_per_page = 50  # rendering rows, not SQL, is most of a page's time (bench/admin_lists.py)
    fieldsets = BaseUserAdmin.fieldsets + (("Relay", {"fields": ("organization", "team")}),)
    add_fieldsets = BaseUserAdmin.add_fieldsets + (("Relay", {"fields": ("email", "organization", "team", "groups")}),)
    change_password_form = PasswordForm

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    # An organization's admins get the member forms: a role, not groups, permissions or flags.
    def get_fieldsets(self, request, obj=None):
        if is_platform(request.user):
            return super().get_fieldsets(request, obj)
        return NEW_MEMBER_FIELDSETS if obj is None else MEMBER_FIELDSETS

    def get_form(self, request, obj=None, **kwargs):
        if not is_platform(request.user):
            form = NewMemberForm if obj is None else MemberRoleForm
            if obj is not None and obj.pk == request.user.pk:
                form = type(form.__name__, (form,), {"role": None})  # shown read-only instead
            kwargs["form"] = form
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if is_platform(request.user) or obj is None:
            return super().get_readonly_fields(request, obj)
        own = ["team", "role", "is_active"] if obj.pk == request.user.pk else []  # nobody raises themselves
        return ["last_login", "date_joined", *own]

    @admin.display(description="role")
    def role(self, obj):
        return role_of(obj)

    def save_model(self, request, obj, form, change):
        pass  # saved with its groups in save_related: the role belongs in the one event

    def save_related(self, request, form, formsets, change):
        base = super().save_related
        users.save_user(form.instance, actor=request.user, role=form.cleaned_data.get("role"),
                        save_related=lambda: base(request, form, formsets, change))

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

    org_admin_access = READ  # and revoke: see has_revoke_permission
    list_display = ["name", "visible_prefix", "owner", "is_active", "expires_at", "revoked_at", "last_used_at", "created_at"]
    list_filter = ["revoked_at", "owner__organization"]
    list_select_related = ["owner", "owner__organization"]
    search_fields = ["name", "prefix", "owner__username"]
    list_per_page = 50  # rendering rows, not SQL, is most of a page's time (bench/admin_lists.py)
    readonly_fields = ["prefix", "secret_hash", "hash_version", "parent", "last_used_at", "revoked_at", "created_at"]
    exclude = []
    actions = ["revoke_selected"]
    save_action, delete_action = keys.save_api_key, keys.delete_api_key

    def has_add_permission(self, request):
        return False  # keys are created where the secret can be shown once: /keys/ or the API

    @admin.display(description="prefix")
    def visible_prefix(self, obj):
        return f"rk_{obj.prefix}…"

    def has_revoke_permission(self, request):
        return self.has_view_permission(request)  # of the keys the list shows: the gate's

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
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


"""The admin console for two kinds of staff, every registered model behind the one scoping gate.

Platform operators (superusers) see and manage every organization; an organization's admins
(role `admin`, whose admin-site access the accounts actions grant and withdraw with the role)
see their own organization only. `RelayAdminSite.register` gives every ModelAdmin, Relay's and
third-party ones alike, the `OrganizationScoped` behaviour, so a model registered later is
scoped without anyone remembering to: a ModelAdmin opens itself to organization admins by
naming `org_admin_access` (READ or MANAGE), and `accounts.E002` insists that such a model has a
scoping rule. Without it the model is for superusers only.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.filters import RelatedOnlyFieldListFilter
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.options import TO_FIELD_VAR
from django.contrib.admin.utils import unquote
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.db.models import Model
from django.http import Http404
from django.template.response import TemplateResponse

from accounts import login_guard, scoping
from accounts.roles import is_org_admin

# What an organization's admins may do with a model's rows (of their organization) in /admin/.
READ, MANAGE = "read", "manage"
_GRANTS = {READ: {"view"}, MANAGE: {"view", "add", "change", "delete"}}


def is_platform(user) -> bool:
    return scoping.sees_every_organization(user)


def administers_an_organization(user) -> bool:
    """An active organization admin with admin-site access (the role's is_staff)."""
    if not (user.is_active and user.is_staff and user.organization_id) or is_platform(user):
        return False
    cached = user.__dict__.get("_relay_org_admin")
    if cached is None:
        cached = user.__dict__["_relay_org_admin"] = is_org_admin(user)
    return cached


def org_admin_access(model: type[Model]) -> str | None:
    model_admin = admin.site._registry.get(model)
    return getattr(model_admin, "org_admin_access", None)


class OrganizationAdminBackend:
    """Django's model permissions (view/add/change/delete) an organization admin holds in the admin,
    read from each ModelAdmin's `org_admin_access`. Object scoping is the gate's (get_queryset).

    Only has_perm and has_module_perms: nothing here shows up in get_all_permissions, so a
    role's permissions, and the keys minted from them, stay exactly the role's."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user, perm: str, obj=None) -> bool:
        if not administers_an_organization(user):
            return False
        app_label, _, codename = perm.partition(".")
        action, _, model_name = codename.partition("_")
        try:
            model = apps.get_model(app_label, model_name)
        except (LookupError, ValueError):
            return False
        return action in _GRANTS.get(org_admin_access(model), ())

    def has_module_perms(self, user, app_label: str) -> bool:
        return administers_an_organization(user) and any(
            model._meta.app_label == app_label and getattr(model_admin, "org_admin_access", None)
            for model, model_admin in admin.site._registry.items())


def _relation_path(model: type[Model], path: str):
    """The field at the end of a lookup path, or None when the path names no field."""
    field = None
    for part in path.split("__"):
        try:
            field = model._meta.get_field(part)
        except FieldDoesNotExist:
            return None
        model = field.related_model or model
    return field


def _organization_model():
    return apps.get_model("accounts", "Organization")


def _names_organization(model, spec) -> bool:
    if isinstance(spec, (tuple, list)):
        spec = spec[0]
    if isinstance(spec, str):
        field = _relation_path(model, spec)
        return field is not None and field.related_model is _organization_model()
    return "organization" in (getattr(spec, "parameter_name", "") or "")


def organization_filter(path: str):
    """The platform operators' organization filter, for any path to a row's organization id."""

    class OrganizationFilter(admin.SimpleListFilter):
        title = "organization"
        parameter_name = "relay_organization"

        def lookups(self, request, model_admin):
            return [(str(pk), name) for pk, name in _organization_model().objects.order_by("name")
                    .values_list("pk", "name")]

        def queryset(self, request, queryset):
            value = self.value()
            if value is None:
                return queryset
            return queryset.filter(**{path: int(value)}) if value.isdigit() and len(value) < 19 else queryset.none()

    return OrganizationFilter


class OrganizationScoped:
    """Mixed into every registered ModelAdmin by RelayAdminSite.register (see the module's doc).

    It goes first in the MRO, so it declares no `org_admin_access` of its own: the ModelAdmin's
    (None when it names none) is read through `access`."""

    @property
    def access(self) -> str | None:
        return getattr(self, "org_admin_access", None)

    # Permissions: superusers as Django decides; anyone else within the model's org_admin_access.
    def _within_access(self, request, action: str) -> bool:
        return is_platform(request.user) or action in _GRANTS.get(self.access, ())

    def has_module_permission(self, request):
        return self._within_access(request, "view") and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        return self._within_access(request, "view") and super().has_view_permission(request, obj)

    def has_add_permission(self, request, *args):
        return self._within_access(request, "add") and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None):
        return self._within_access(request, "change") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._within_access(request, "delete") and super().has_delete_permission(request, obj)

    def get_actions(self, request):
        found = super().get_actions(request)
        if is_platform(request.user):
            return found
        # An action that does not say which permission it needs is the operators' alone.
        return {name: entry for name, entry in found.items() if hasattr(entry[0], "allowed_permissions")}

    # Rows: the gate decides, for the list, the forms, search, filters, drill-downs, autocomplete,
    # raw-id popups, history, delete and actions alike (they all start from get_queryset).
    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if is_platform(request.user):
            return queryset
        if not self._within_access(request, "view"):
            return queryset.none()  # a platform table (perhaps without a scoping rule); its views answer 403
        return scoping.restrict(queryset, request.user, None, scoping.ADMINISTER)

    def get_object(self, request, object_id, from_field=None):
        if not self._within_access(request, "view"):
            raise PermissionDenied  # a platform table: 403 before any lookup (it may have no scoping rule)
        obj = super().get_object(request, object_id, from_field)
        if obj is None and not is_platform(request.user):
            self._refuse(request, object_id)
            raise Http404(f"No {self.opts.verbose_name} with that id.")
        return obj

    # Django runs a POST to these views in a transaction, whose rollback would take the denied
    # event with it: an object outside the caller's scope is refused before it starts.
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        self._refuse_hidden_before_writing(request, object_id)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        self._refuse_hidden_before_writing(request, object_id)
        return super().delete_view(request, object_id, extra_context)

    def _refuse_hidden_before_writing(self, request, object_id) -> None:
        if object_id is None or request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or is_platform(request.user):
            return
        to_field = request.POST.get(TO_FIELD_VAR, request.GET.get(TO_FIELD_VAR))
        if to_field and not self.to_field_allowed(request, to_field):
            return  # Django's view refuses it
        self.get_object(request, unquote(object_id), to_field)

    def _refuse(self, request, object_id) -> None:
        scoping.refuse_hidden(self.model, object_id, resource=f"{self.opts.model_name}:{object_id}"[:255],
                              request=request, metadata={"method": request.method, "path": request.path[:500],
                                                         "status": 404, "via": "admin"})

    def response_action(self, request, queryset):
        if not is_platform(request.user):
            self._refuse_hidden_selection(request)
        return super().response_action(request, queryset)

    def _refuse_hidden_selection(self, request) -> None:
        """Ids posted by hand for rows outside the caller's scope: 404 and one denied event."""
        pk = self.opts.pk
        selected = []
        for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                selected.append(pk.to_python(value))
            except ValidationError:
                continue
        if not selected:
            return
        seen = set(self.get_queryset(request).filter(pk__in=selected).values_list("pk", flat=True))
        hidden = [value for value in selected if value not in seen]
        if hidden:
            self._refuse(request, hidden[0])
            raise Http404(f"No {self.opts.verbose_name} with that id.")

    # Forms: choices of related rows through the gate; the organization is the admin's own, fixed.
    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        user = request.user
        if not is_platform(user):
            kwargs["queryset"] = self._related_choices(db_field.related_model, user)
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None and not is_platform(user) and db_field.related_model is _organization_model():
            field.disabled, field.initial = True, user.organization_id
        return field

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if not is_platform(request.user):
            kwargs["queryset"] = self._related_choices(db_field.related_model, request.user)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @staticmethod
    def _related_choices(model, user):
        try:
            return scoping.restrict(model, user, None, scoping.ADMINISTER)
        except LookupError:
            return model._default_manager.none()  # no rule: a platform table, the operators' alone

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        if not is_platform(request.user):
            for field in self.opts.fields:
                if field.related_model is _organization_model():
                    initial[field.name] = request.user.organization_id
        return initial

    # Filters: operators filter every list by organization; an organization's admins see only
    # their own values in each filter, and no organization filter at all.
    def get_list_filter(self, request):
        specs = list(super().get_list_filter(request))
        if is_platform(request.user):
            return specs + self._organization_filter(specs)
        return [scoped for spec in specs if (scoped := self._scoped_filter(spec)) is not None]

    def _organization_filter(self, specs) -> list:
        try:
            path = scoping.rule_for(self.model).organization
        except LookupError:
            return []
        if path is None or path == "pk" or any(_names_organization(self.model, spec) for spec in specs):
            return []
        return [organization_filter(path)]

    def _scoped_filter(self, spec):
        if _names_organization(self.model, spec):
            return None
        if not isinstance(spec, str):
            return spec  # fixed choices, dates, or a filter class that reads the scoped queryset
        field = _relation_path(self.model, spec)
        if field is not None and field.is_relation:
            return spec, RelatedOnlyFieldListFilter  # the values among the admin's own rows
        # A plain field across a relation lists its values from the whole related table.
        return spec if "__" not in spec else None


class RelayAdminSite(admin.AdminSite):
    site_header = "Relay admin console"
    site_title = "Relay admin"
    index_title = "Administration"

    def register(self, model_or_iterable, admin_class=None, **options):
        base = admin_class or admin.ModelAdmin
        if not issubclass(base, OrganizationScoped):
            base = type(base.__name__, (OrganizationScoped, base), {"__module__": base.__module__})
        super().register(model_or_iterable, base, **options)

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        def refuse_or_serve(request, *args, **kwargs):
            self.refuse_signed_in_outsider(request)
            return inner(request, *args, **kwargs)

        refuse_or_serve.__dict__.update(inner.__dict__)
        return refuse_or_serve

    def login(self, request, extra_context=None):
        self.refuse_signed_in_outsider(request)
        if request.method != "POST":
            return super().login(request, extra_context)
        # The same limit as the console's sign-in: the admin's form is another door to the same passwords.
        username = request.POST.get("username", "")
        if not login_guard.admit(request, username):
            context = {**self.each_context(request), "title": "Log in", "app_path": request.get_full_path(),
                       "form": (self.login_form or AdminAuthenticationForm)(request), "throttled": True,
                       **(extra_context or {})}
            response = TemplateResponse(request, self.login_template or "admin/login.html", context, status=429)
            response["Retry-After"] = str(login_guard.WINDOW_SECONDS)
            return response
        response = super().login(request, extra_context)
        if request.user.is_authenticated and self.has_permission(request):
            login_guard.succeeded(request, username)
        return response

    def refuse_signed_in_outsider(self, request) -> None:
        """A signed-in user without admin access gets Relay's 403 page (audited), not the admin login."""
        user = request.user
        if not user.is_authenticated or self.has_permission(request):
            return
        if getattr(request.resolver_match, "url_name", None) == "logout":
            return
        from audit import actions
        from audit.services import record

        record(actions.PERMISSION_DENIED, status=actions.DENIED, request=request, actor=user, resource="admin",
               metadata={"method": request.method, "path": request.path[:500], "status": 403})
        raise PermissionDenied("Your account has no access to the admin console.")


@checks.register(checks.Tags.admin)
def check_org_admin_access(app_configs=None, **kwargs):
    """accounts.E002: a model opened to organization admins has a scoping rule (else the gate cannot scope it)."""
    errors = []
    for model, model_admin in admin.site._registry.items():
        access = getattr(model_admin, "org_admin_access", None)
        if access is None:
            continue
        if access not in _GRANTS:
            errors.append(checks.Error(f"{type(model_admin).__name__}.org_admin_access is {access!r}; use READ or "
                                       f"MANAGE (accounts.admin_site), or None.", obj=type(model_admin),
                                       id="accounts.E001"))
        try:
            scoping.rule_for(model)
        except LookupError:
            errors.append(checks.Error(f"{model._meta.label} is open to organization admins in the admin but has no "
                                       "scoping rule; register one (accounts.scoping.register).",
                                       obj=type(model_admin), id="accounts.E002"))
    return errors

"""Console pages of the accounts app: sign in and out, password change, API keys (HTML, session auth)."""

from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse_lazy
from django.utils.decorators import method_decorator

from accounts.actions.users import change_password
from accounts.api.serializers import APIKeySerializer
from accounts.models import APIKey
from accounts.pages import page
from accounts.permissions import AUTHENTICATED, holds
from accounts.roles import AGENT_PERMISSIONS, ALL_PERMISSIONS, effective_permissions
from relay.http import client_ip

_LOGIN_FAILURES_ALLOWED = 10
_LOGIN_WINDOW_SECONDS = 300


def _failure_key(request) -> str:
    return f"login-failures:{client_ip(request.META) or 'unknown'}"


class LoginView(auth_views.LoginView):
    """Django's login, refusing an address after repeated failures (a 5-minute window)."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        if (cache.get(_failure_key(request)) or 0) >= _LOGIN_FAILURES_ALLOWED:
            response = render(request, "registration/login.html", {"form": self.get_form(), "throttled": True},
                              status=429)
            response["Retry-After"] = str(_LOGIN_WINDOW_SECONDS)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        key = _failure_key(self.request)
        cache.add(key, 0, _LOGIN_WINDOW_SECONDS)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, _LOGIN_WINDOW_SECONDS)
        return super().form_invalid(form)


class LogoutView(auth_views.LogoutView):
    pass


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "registration/password_change_form.html"
    success_url = reverse_lazy("password-change-done")

    @method_decorator(page())
    def dispatch(self, *args, **kwargs):
        return super().dispatch(*args, **kwargs)

    def form_valid(self, form):
        # Django's form_valid saves through the form; the change goes through the action (audited).
        change_password(form.user, form.cleaned_data["new_password1"], actor=self.request.user)
        update_session_auth_hash(self.request, form.user)
        return HttpResponseRedirect(self.get_success_url())


@page()
def password_change_done(request):
    return render(request, "registration/password_change_done.html")


@page()
def keys(request):
    """Your API keys. Creating, revoking and rotating go through /api/v1/keys/ (the secret is shown once)."""
    user = request.user
    own_keys = APIKey.objects.filter(owner=user).order_by("-created_at")
    scopes = [{"codename": codename, "label": label} for codename, label in ALL_PERMISSIONS
              if codename in effective_permissions(user)]
    return render(request, "console/keys.html", {
        "keys": APIKeySerializer(own_keys, many=True).data,
        "scopes": scopes,
        # AGENT_PERMISSIONS names every agent (agents.registry refuses one it lacks); the keys API checks it too.
        "agents": [name for name, permission in sorted(AGENT_PERMISSIONS.items())
                   if holds(user, None, permission or AUTHENTICATED)],
    })

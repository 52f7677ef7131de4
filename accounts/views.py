"""Console pages of the accounts app: sign in and out, password change, API keys (HTML, session auth)."""

from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse_lazy
from django.utils.decorators import method_decorator

from accounts import login_guard
from accounts.actions.users import change_password
from accounts.api.serializers import APIKeySerializer
from accounts.models import APIKey
from accounts.pages import page
from accounts.permissions import AUTHENTICATED, holds
from accounts.roles import AGENT_PERMISSIONS, ALL_PERMISSIONS, effective_permissions


class LoginView(auth_views.LoginView):
    """Django's login, refusing an address or a username after repeated attempts (accounts.login_guard)."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")
        if not login_guard.admit(request, username):
            response = render(request, "registration/login.html", {"form": self.get_form(), "throttled": True},
                              status=429)
            response["Retry-After"] = str(login_guard.WINDOW_SECONDS)
            return response
        response = super().post(request, *args, **kwargs)
        if request.user.is_authenticated:
            login_guard.succeeded(request, username)
        return response


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

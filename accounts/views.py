"""Console pages of the accounts app: sign in and out (HTML, session auth)."""

from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.shortcuts import render

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

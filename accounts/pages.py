"""Console pages: who may open each page, and the navigation that shows only those pages.

Pages use the same requirements as the API (`accounts.permissions.holds`): a codename, ADMIN
or AUTHENTICATED. Anonymous visitors are sent to the login page; a signed-in user without the
permission gets a 403 page (never a page whose every action would fail).
"""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render
from django.urls import reverse

from accounts.permissions import ADMIN, AUTHENTICATED, holds

# (url name, label, requirement); the order is the navigation's.
NAVIGATION = [
    ("chat", "Chat", AUTHENTICATED),
    ("usage", "Usage", AUTHENTICATED),
    ("keys", "API keys", AUTHENTICATED),
    ("budgets", "Budgets", ADMIN),
    ("training", "Training", "manage_training"),
]


def may_open(user, requirement: str) -> bool:
    return holds(user, None, requirement)


def page(requirement: str = AUTHENTICATED):
    """Decorate a console view: sign-in first, then the requirement (403 page otherwise)."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not may_open(request.user, requirement):
                return render(request, "console/forbidden.html", status=403)
            return view(request, *args, **kwargs)

        wrapper.required_permission = requirement
        return wrapper

    return decorate


def nav_items(request) -> list[dict]:
    user = request.user
    current = getattr(request.resolver_match, "url_name", None)
    items = [{"name": name, "label": label, "url": reverse(name), "current": name == current}
             for name, label, requirement in NAVIGATION if may_open(user, requirement)]
    if user.is_staff:
        items.append({"name": "admin", "label": "Admin", "url": reverse("admin:index"), "current": False})
    return items

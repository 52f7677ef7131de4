"""Security headers Django's SecurityMiddleware does not set: Content-Security-Policy and friends.

The policy forbids inline script (`script-src 'self'`): every script of the console, the admin
and the API docs is a file under /static/, so a stored XSS that slips past template escaping
still cannot run. Inline *styles* stay allowed because the Django admin and Swagger UI set
`style=` attributes; styles cannot run code. `frame-ancestors 'none'` repeats X-Frame-Options
DENY for browsers that only read CSP. Override with RELAY_CSP (the whole header value).
"""

from asgiref.sync import sync_to_async
from django.conf import settings
from django.dispatch import Signal

from relay.eventloop.middleware import DualModeMiddleware

DEFAULT_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",  # the console's fetch, SSE and same-origin WebSocket (CSP3 'self' covers ws/wss)
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


def policy() -> str:
    return getattr(settings, "RELAY_CSP", "") or DEFAULT_POLICY


def add_security_headers(response) -> None:
    """Set, without overriding a view that chose its own (e.g. a download)."""
    if "Content-Security-Policy" not in response:
        response["Content-Security-Policy"] = policy()
    if "Permissions-Policy" not in response:
        response["Permissions-Policy"] = PERMISSIONS_POLICY
    # API answers carry credentials-dependent data: never let a shared cache keep them.
    if response.get("Content-Type", "").startswith("application/json") and "Cache-Control" not in response:
        response["Cache-Control"] = "no-store"


ADMIN_PREFIX = "/admin/"
# Sent (request=, user=) when a signed-in user without admin access is turned away from the admin;
# the audit app records it as denied (relay/ imports no app).
admin_visit_refused = Signal()


def refused_admin_visit(request, response) -> bool:
    """A signed-in user without admin-site access sent to the admin login (Django's refusal)."""
    return (request.path.startswith(ADMIN_PREFIX) and response.status_code == 302
            and response.get("Location", "").startswith(f"{ADMIN_PREFIX}login/"))


def record_admin_refusal(request, user) -> None:
    """Announce it for the audit trail: Django's admin redirects instead of answering 403, so nothing else would."""
    if not (user.is_authenticated and user.is_active) or user.is_staff:
        return
    admin_visit_refused.send(sender=SecurityHeadersMiddleware, request=request, user=user)


class SecurityHeadersMiddleware(DualModeMiddleware):
    """Sync and async, so it never moves the async hot path onto the sync thread.

    It sits outside the auth middleware: on the way out `request.user` is set (read only for the
    rare admin refusal).
    """

    def handle(self, request):
        response = self.get_response(request)
        add_security_headers(response)
        if refused_admin_visit(request, response) and hasattr(request, "user"):
            record_admin_refusal(request, request.user)
        return response

    async def __acall__(self, request):
        response = await self.get_response(request)
        add_security_headers(response)
        if refused_admin_visit(request, response) and hasattr(request, "auser"):
            await sync_to_async(record_admin_refusal)(request, await request.auser())
        return response

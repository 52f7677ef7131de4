"""Security headers Django's SecurityMiddleware does not set: Content-Security-Policy and friends.

The policy forbids inline script (`script-src 'self'`): every script of the console, the admin
and the API docs is a file under /static/, so a stored XSS that slips past template escaping
still cannot run. Inline *styles* stay allowed because the Django admin and Swagger UI set
`style=` attributes; styles cannot run code. `frame-ancestors 'none'` repeats X-Frame-Options
DENY for browsers that only read CSP. Override with RELAY_CSP (the whole header value).
"""

from django.conf import settings

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


class SecurityHeadersMiddleware(DualModeMiddleware):
    """Sync and async, so it never moves the async hot path onto the sync thread."""

    def handle(self, request):
        response = self.get_response(request)
        add_security_headers(response)
        return response

    async def __acall__(self, request):
        response = await self.get_response(request)
        add_security_headers(response)
        return response

"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from audit.asgi import AuditScopeMiddleware  # noqa: E402
from relay.routing import websocket_urlpatterns  # noqa: E402
from relay.ws_security import BrowserOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(AuditScopeMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

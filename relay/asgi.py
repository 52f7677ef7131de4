"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
django.setup(set_prefix=False)

from relay.eventloop.handler import RelayASGIHandler  # noqa: E402  (needs Django set up first)

django_asgi_app = RelayASGIHandler()

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

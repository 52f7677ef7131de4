"""WebSocket origin check that fits both browsers and programs.

Browsers always send Origin, and a cross-site page must not ride the user's session cookie
(cross-site WebSocket hijacking), so an Origin must name an allowed host. Programs send no
Origin and authenticate with a token in their first message, which a foreign page cannot do.
"""

from channels.security.websocket import OriginValidator
from django.conf import settings


class BrowserOriginValidator(OriginValidator):
    def __init__(self, application):
        super().__init__(application, settings.ALLOWED_HOSTS)

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)

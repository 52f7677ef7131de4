"""DRF authentication: API keys (`Bearer rk_...`), JWTs (`Bearer <jwt>`), browser sessions."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework_simplejwt.authentication import JWTAuthentication

from accounts.services import KEY_PREFIX, KeyRejected, authenticate_key
from audit import context as audit_context
from relay.http import client_ip


def bearer_token(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "").split()
    if not header or header[0].lower() != "bearer":
        return None
    if len(header) != 2:
        raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
    if not header[1].isascii():
        raise exceptions.AuthenticationFailed("The bearer token must be ASCII.")
    return header[1]


class APIKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer rk_...`; request.auth becomes the APIKey."""

    def authenticate(self, request):
        token = bearer_token(request)
        if not token or not token.startswith(KEY_PREFIX):
            return None
        try:
            key = authenticate_key(token, client_ip=client_ip(request.META))
        except KeyRejected as rejected:
            raise exceptions.AuthenticationFailed(rejected.reason) from None
        audit_context.set_actor(key.owner, key)  # DRF authenticates inside the view: tell the audit context now
        return key.owner, key

    def authenticate_header(self, request):
        return 'Bearer realm="relay"'


class BearerJWTAuthentication(JWTAuthentication):
    """JWTs from /api/v1/auth/token/; leaves `rk_` keys to APIKeyAuthentication."""

    def authenticate(self, request):
        token = bearer_token(request)
        if not token or token.startswith(KEY_PREFIX):
            return None
        result = super().authenticate(request)
        if result is not None:
            audit_context.set_actor(result[0])
        return result


class APIKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer rk_...` (create one at /keys/ or POST /api/v1/keys/).",
        }


class BearerJWTScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BearerJWTAuthentication"
    name = "jwt"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from POST /api/v1/auth/token/.",
        }

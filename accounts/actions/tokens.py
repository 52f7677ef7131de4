"""JWT pairs: simplejwt issues them (and blacklists the refresh token it replaces); this records it."""

from django.db import transaction
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import User
from audit.services import record


@transaction.atomic
def token_issued(action: str, request, access_token: str) -> None:
    """A pair was issued (sign-in or refresh): the actor is whoever the new token names."""
    user_id = AccessToken(access_token).get(api_settings.USER_ID_CLAIM)
    user = User.objects.filter(pk=user_id).first()
    record(action, actor=user, request=request, resource=f"user:{user_id}", metadata={"channel": "jwt"})

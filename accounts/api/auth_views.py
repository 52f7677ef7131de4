"""JWT issue and refresh (simplejwt), throttled against credential guessing."""

from rest_framework_simplejwt import views as jwt_views

from accounts.throttling import LoginRateThrottle


class TokenObtainView(jwt_views.TokenObtainPairView):
    """Exchange username and password for an access and a refresh token."""

    required_permission = None
    authentication_classes = []
    throttle_classes = [LoginRateThrottle]


class TokenRefreshView(jwt_views.TokenRefreshView):
    """Exchange a refresh token for a new pair; the old refresh token is blacklisted."""

    required_permission = None
    authentication_classes = []
    throttle_classes = [LoginRateThrottle]

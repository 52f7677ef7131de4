"""JWT issue and refresh (simplejwt), throttled against credential guessing."""

from rest_framework_simplejwt import views as jwt_views

from accounts.actions.tokens import token_issued
from accounts.throttling import LoginRateThrottle
from audit import actions as audit_actions


class _AuditedTokenView:
    """Records each pair issued; refusals are recorded by the audit error listener."""

    audit_success_action = ""

    def post(self, request, *args, **kwargs):
        response = super().post(request, *args, **kwargs)
        if response.status_code == 200:
            token_issued(self.audit_success_action, request, response.data["access"])
        return response


class TokenObtainView(_AuditedTokenView, jwt_views.TokenObtainPairView):
    """Exchange username and password for an access and a refresh token."""

    audit_success_action = audit_actions.TOKEN_ISSUED

    required_permission = None
    authentication_classes = []
    throttle_classes = [LoginRateThrottle]


class TokenRefreshView(_AuditedTokenView, jwt_views.TokenRefreshView):
    """Exchange a refresh token for a new pair; the old refresh token is blacklisted."""

    audit_success_action = audit_actions.TOKEN_REFRESHED
    audit_auth_failure_action = audit_actions.TOKEN_REFRESH_FAILED

    required_permission = None
    authentication_classes = []
    throttle_classes = [LoginRateThrottle]

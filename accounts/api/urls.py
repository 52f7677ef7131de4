from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api import audit_views, auth_views, views

router = SimpleRouter(trailing_slash=True)
router.register("users", views.UserViewSet, basename="user")
router.register("teams", views.TeamViewSet, basename="team")
router.register("keys", views.APIKeyViewSet, basename="apikey")

urlpatterns = [
    path("auth/token/", auth_views.TokenObtainView.as_view(), name="token-obtain"),
    path("auth/token/refresh/", auth_views.TokenRefreshView.as_view(), name="token-refresh"),
    path("me", views.MeView.as_view(), name="me"),
    path("audit/events", audit_views.AuditEventListView.as_view(), name="audit-events"),
    path("audit/export", audit_views.AuditExportView.as_view(), name="audit-export"),
    *router.urls,
]

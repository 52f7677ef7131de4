from django.urls import path
from rest_framework.routers import SimpleRouter

from agents.api import platform_views, run_views, views

router = SimpleRouter(trailing_slash=True)
router.register("conversations", views.ConversationViewSet, basename="conversation")
router.register("documents", views.DocumentViewSet, basename="document")
router.register("platform/models", platform_views.PlatformModelViewSet, basename="platform-model")
router.register("platform/deployments", platform_views.PlatformDeploymentViewSet, basename="platform-deployment")

urlpatterns = [
    path("query", run_views.query, name="query"),
    path("stream", run_views.stream, name="stream"),
    path("vision/analyze", run_views.vision_analyze, name="vision-analyze"),
    path("agents/", views.AgentListView.as_view(), name="agent-list"),
    path("messages/<uuid:pk>/feedback", views.MessageFeedbackView.as_view(), name="message-feedback"),
    *router.urls,
]

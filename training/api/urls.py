from django.urls import include, path
from rest_framework.routers import SimpleRouter

from training.api import views

router = SimpleRouter(trailing_slash=True)
router.register("datasets", views.DatasetViewSet, basename="training-dataset")
router.register("versions", views.VersionViewSet, basename="training-version")

urlpatterns = [
    path("consent", views.ConsentView.as_view(), name="training-consent"),
    path("conversations/<uuid:pk>/exclusion", views.ExclusionView.as_view(), name="training-exclusion"),
    *router.urls,
    path("", include("training.api.evaluation_urls")),
]

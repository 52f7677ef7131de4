from rest_framework.routers import SimpleRouter

from training.api import evaluation_views

router = SimpleRouter(trailing_slash=True)
router.register("evaluation-sets", evaluation_views.EvaluationSetViewSet, basename="training-evaluation-set")
router.register("evaluations", evaluation_views.EvaluationViewSet, basename="training-evaluation")

urlpatterns = router.urls

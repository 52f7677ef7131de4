from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from accounts.permissions import PLATFORM_STAFF
from agents import views as agent_views
from billing import views as billing_views
from relay import health, views
from relay.api import errors
from relay.observability import views as metrics_views
from training import views as training_views

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("agents.api.urls")),
    path("costs/", include("billing.api.urls")),
    path("training/", include("training.api.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("logout/", account_views.LogoutView.as_view(), name="logout"),
    path("password/", account_views.PasswordChangeView.as_view(), name="password-change"),
    path("password/done/", account_views.password_change_done, name="password-change-done"),
    path("chat/", agent_views.chat, name="chat"),
    path("documents/<int:pk>/", agent_views.document, name="document"),
    path("usage/", billing_views.usage, name="usage"),
    path("keys/", account_views.keys, name="keys"),
    path("budgets/", billing_views.budgets, name="budgets"),
    path("training/", training_views.training, name="training"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("v1/", include("agents.api.openai_urls")),
    path("api/schema/", views.SchemaView.as_view(), name="schema"),
    path("api/docs/", views.SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_views.metrics_view_requiring(PLATFORM_STAFF), name="metrics"),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500

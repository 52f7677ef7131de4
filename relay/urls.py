from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from relay import health, views
from relay.api import errors

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("agents.api.urls")),
    path("costs/", include("billing.api.urls")),
    path("", include("audit.api.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("logout/", account_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("v1/", include("agents.api.openai_urls")),
    path("api/schema/", views.SchemaView.as_view(), name="schema"),
    path("api/docs/", views.SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500

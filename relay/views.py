from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView


@login_required
def home(request):
    return render(request, "home.html")


class SchemaView(SpectacularAPIView):
    """The OpenAPI document: public, like the docs page that renders it."""

    required_permission = None


class SwaggerView(SpectacularSwaggerView):
    required_permission = None

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView


@login_required
def home(request):
    return render(request, "home.html")


class SchemaView(SpectacularAPIView):
    """The OpenAPI document: public, like the docs page that renders it."""

    required_permission = None


class SwaggerView(SpectacularSwaggerSplitView):
    """The split view serves Swagger UI's start-up code as a script file: the CSP forbids inline script."""

    required_permission = None

"""The platform API: the models Relay serves and their deployments, for platform staff only.

Thin views over agents.actions.endpoints (each write audited once there). The rows are the
platform's, no organization's: the scoping rule (`Rule(platform=True)`) and the requirement
(PLATFORM_STAFF) both leave every organization role out.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.response import Response

from accounts.permissions import PLATFORM_STAFF
from accounts.scoping import ScopedViewSet
from agents.actions import endpoints
from agents.api.platform_serializers import (
    DeploymentSerializer,
    PlatformModelSerializer,
    PlatformModelUpdateSerializer,
)
from agents.models import ModelDeployment, ModelEndpoint

_METHODS = ["get", "post", "patch", "delete", "head", "options"]


class PlatformModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """Models (the names clients ask for) with their deployments, routing and health settings."""

    required_permission = PLATFORM_STAFF
    queryset = ModelEndpoint.objects.prefetch_related("deployments").order_by("name")
    serializer_class = PlatformModelSerializer
    http_method_names = _METHODS

    @extend_schema(request=PlatformModelSerializer, responses={201: PlatformModelSerializer},
                   summary="Add a model with its deployments")
    def create(self, request):
        data = PlatformModelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        endpoint = endpoints.create_endpoint(fields.pop("name"), deployments=fields.pop("deployments", []),
                                             actor=request.user, **fields)
        return Response(PlatformModelSerializer(endpoint).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=PlatformModelUpdateSerializer, responses=PlatformModelSerializer,
                   summary="Change a model's settings (its deployments: /api/v1/platform/deployments/)")
    def partial_update(self, request, pk=None):
        endpoint = self.get_object()
        data = PlatformModelUpdateSerializer(endpoint, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        for name, value in data.validated_data.items():
            setattr(endpoint, name, value)
        endpoints.save_endpoint(endpoint, actor=request.user)
        return Response(PlatformModelSerializer(self.get_queryset().get(pk=endpoint.pk)).data)

    @extend_schema(responses={204: None}, summary="Delete a model and its deployments")
    def destroy(self, request, pk=None):
        endpoints.delete_endpoint(self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PlatformDeploymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """Deployments of every model; `?model=<id>` lists one model's."""

    required_permission = PLATFORM_STAFF
    queryset = ModelDeployment.objects.select_related("endpoint").order_by("endpoint__name", "priority", "name")
    serializer_class = DeploymentSerializer
    http_method_names = _METHODS

    def get_queryset(self):
        deployments = super().get_queryset()
        model = self.request.query_params.get("model")
        if self.action == "list" and model is not None:
            deployments = deployments.filter(endpoint=model) if model.isdigit() and len(model) < 19 \
                else deployments.none()
        return deployments

    @extend_schema(request=DeploymentSerializer, responses={201: DeploymentSerializer},
                   summary="Add a deployment to a model")
    def create(self, request):
        data = DeploymentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = endpoints.save_deployment(ModelDeployment(**data.validated_data), actor=request.user)
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DeploymentSerializer, responses=DeploymentSerializer, summary="Change a deployment")
    def partial_update(self, request, pk=None):
        deployment = self.get_object()
        data = DeploymentSerializer(deployment, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        for name, value in data.validated_data.items():
            setattr(deployment, name, value)
        endpoints.save_deployment(deployment, actor=request.user)
        return Response(DeploymentSerializer(deployment).data)

    @extend_schema(responses={204: None}, summary="Delete a deployment")
    def destroy(self, request, pk=None):
        endpoints.delete_deployment(self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

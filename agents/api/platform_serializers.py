"""The platform API's shapes of models and deployments (agents/api/platform_views.py).

Bounds come from the model fields (their validators become min/max here); text is refused when it
is not a string. What needs the database or the other rows (served fallback names, a name unique
within its model) is checked again by the actions (`full_clean`), so a write from any door
meets the same rules.
"""

from django.db import models
from rest_framework import serializers

from agents.actions.endpoints import MAX_DEPLOYMENTS
from agents.models import MAX_FALLBACKS, ModelDeployment, ModelEndpoint
from relay.api.serializers import StrictCharField, StrictModelSerializer


class StrictSlugField(serializers.SlugField):
    default_error_messages = {"invalid_type": "Not a valid string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_type")
        return super().to_internal_value(data)


class _Strict(StrictModelSerializer):
    serializer_field_mapping = {**StrictModelSerializer.serializer_field_mapping,
                                models.CharField: StrictCharField, models.SlugField: StrictSlugField}


DEPLOYMENT_FIELDS = ["id", "name", "base_url", "upstream_model", "api_key_env", "weight", "priority", "rpm_limit",
                     "tpm_limit", "enabled"]


class NewDeploymentSerializer(_Strict):
    """A deployment given with a new model (its name unique among them: checked by the model's serializer)."""

    class Meta:
        model = ModelDeployment
        fields = DEPLOYMENT_FIELDS
        read_only_fields = ["id"]


class DeploymentSerializer(_Strict):
    model = serializers.PrimaryKeyRelatedField(source="endpoint", queryset=ModelEndpoint.objects.all())
    model_name = serializers.CharField(source="endpoint.name", read_only=True)

    class Meta:
        model = ModelDeployment
        fields = ["id", "model", "model_name", *DEPLOYMENT_FIELDS[1:]]
        read_only_fields = ["id"]
        validators = []  # the name's uniqueness within its model is answered on `name`, below

    def validate(self, attrs):
        endpoint = attrs.get("endpoint", getattr(self.instance, "endpoint", None))
        if self.instance is not None and endpoint != self.instance.endpoint:
            raise serializers.ValidationError({"model": ["A deployment cannot move to another model."]})
        name = attrs.get("name", getattr(self.instance, "name", None))
        taken = ModelDeployment.objects.filter(endpoint=endpoint, name=name)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError({"name": [f"This model already has a deployment called {name!r}."]})
        return attrs


class PlatformModelSerializer(_Strict):
    fallbacks = serializers.ListField(child=StrictCharField(max_length=100), max_length=MAX_FALLBACKS,
                                      required=False)
    deployments = NewDeploymentSerializer(many=True, required=False, max_length=MAX_DEPLOYMENTS)

    class Meta:
        model = ModelEndpoint
        fields = ["id", "name", "provider_kind", "tier", "supports_tools", "enabled", "routing_strategy",
                  "allowed_fails", "failure_window_seconds", "cooldown_seconds", "num_retries",
                  "first_token_timeout_seconds", "fallbacks", "context_window_fallback", "deployments"]
        read_only_fields = ["id"]

    def validate_deployments(self, value):
        names = [deployment["name"] for deployment in value]
        if len(set(names)) != len(names):
            raise serializers.ValidationError("Each deployment of a model needs its own name.")
        return value


class PlatformModelUpdateSerializer(PlatformModelSerializer):
    deployments = NewDeploymentSerializer(many=True, read_only=True)  # changed at /api/v1/platform/deployments/

from rest_framework import serializers

from accounts.models import Team, User
from accounts.roles import AGENT_PERMISSIONS
from relay.api.serializers import StrictCharField, StrictModelSerializer, StrictSerializer
from training import exports, services
from training.models import Dataset, DatasetVersion, TrainingConsent

STATUSES = [*services.COMPLETE, *services.FAILED]


class ConsentSerializer(StrictModelSerializer):
    changed_by = serializers.CharField(source="changed_by.username", read_only=True, default=None, allow_null=True)

    class Meta:
        model = TrainingConsent
        fields = ["enabled", "changed_by", "changed_at"]
        read_only_fields = ["changed_by", "changed_at"]


class ConsentInputSerializer(StrictSerializer):
    enabled = serializers.BooleanField()


class ExclusionSerializer(serializers.Serializer):
    conversation = serializers.UUIDField()
    excluded = serializers.BooleanField()
    reason = serializers.CharField(allow_null=True)


class DatasetSerializer(StrictModelSerializer):
    """A definition: empty lists mean any; failed statuses need include_failed."""

    name = StrictCharField(max_length=200)
    description = StrictCharField(allow_blank=True, required=False, max_length=2000)
    agents = serializers.ListField(child=serializers.ChoiceField(choices=sorted(AGENT_PERMISSIONS)), required=False,
                                   max_length=20)
    models = serializers.ListField(child=StrictCharField(max_length=100), source="model_names", required=False,
                                   max_length=50)
    users = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, max_length=500)
    teams = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, max_length=100)
    statuses = serializers.ListField(child=serializers.ChoiceField(choices=STATUSES), required=False, max_length=5)
    min_quality = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True)
    validation_percent = serializers.IntegerField(min_value=0, max_value=50, required=False)
    versions = serializers.IntegerField(source="versions.count", read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "agents", "models", "users", "teams", "start", "end", "min_quality",
                  "feedback", "statuses", "include_cached", "include_failed", "include_evaluation",
                  "validation_percent", "created_at", "versions"]
        read_only_fields = ["id", "created_at", "versions"]

    def validate(self, data):
        organization = self.context["organization"]
        errors = {}
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            errors["end"] = ["The end comes after the start."]
        failed = sorted(set(data.get("statuses", [])) & set(services.FAILED))
        if failed and not data.get("include_failed"):
            errors["statuses"] = [f"{', '.join(failed)} answers need include_failed."]
        users = set(data.get("users", []))
        if users - set(User.objects.filter(organization=organization, pk__in=users).values_list("pk", flat=True)):
            errors["users"] = ["Every user must belong to your organization."]
        teams = set(data.get("teams", []))
        if teams - set(Team.objects.filter(organization=organization, pk__in=teams).values_list("pk", flat=True)):
            errors["teams"] = ["Every team must belong to your organization."]
        if errors:
            raise serializers.ValidationError(errors)
        for name in ("agents", "model_names", "users", "teams", "statuses"):
            if name in data:
                data[name] = sorted(set(data[name]))
        return data


class VersionSerializer(serializers.ModelSerializer):
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    progress = serializers.SerializerMethodField(help_text="processed / total, 0 to 1 (1 when there is nothing).")
    withdrawn = serializers.BooleanField(read_only=True)
    download_formats = serializers.SerializerMethodField()

    class Meta:
        model = DatasetVersion
        fields = ["id", "dataset", "dataset_name", "number", "state", "processed", "total", "progress", "rows",
                  "train_rows", "validation_rows", "exact_duplicates", "near_duplicates", "redactions",
                  "content_sha256", "file_size", "message", "withdrawn", "withdrawn_at", "withdrawn_reason",
                  "definition", "created_at", "started_at", "finished_at", "download_formats"]
        read_only_fields = fields

    def get_progress(self, version) -> float:
        if version.state == DatasetVersion.State.DONE or not version.total:
            return 1.0 if version.state == DatasetVersion.State.DONE else 0.0
        return round(min(1.0, version.processed / version.total), 4)

    def get_download_formats(self, version) -> list[str]:
        """The formats a download would give now: none while the organization's consent is off (409)."""
        ready = version.state == DatasetVersion.State.DONE and not version.withdrawn
        return list(exports.FORMATS) if ready and self._consent(version.dataset.organization_id) else []

    def _consent(self, organization_id) -> bool:
        known = self.__dict__.setdefault("_consent_of", {})  # one query per organization, not per version
        if organization_id not in known:
            known[organization_id] = services.consent_enabled(organization_id)
        return known[organization_id]


class VersionQuerySerializer(StrictSerializer):
    dataset = serializers.IntegerField(min_value=1, required=False)


class DownloadQuerySerializer(StrictSerializer):
    format = serializers.ChoiceField(choices=exports.FORMATS, default="chat")
    split = serializers.ChoiceField(choices=exports.SPLITS, default="all")

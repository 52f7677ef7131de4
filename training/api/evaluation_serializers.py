from rest_framework import serializers

from accounts.roles import AGENT_PERMISSIONS
from relay.api.serializers import StrictCharField, StrictSerializer
from training import evaluations
from training.models_evaluation import Evaluation, EvaluationResult, EvaluationSet


class EvaluationSetSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = EvaluationSet
        fields = ["id", "name", "source", "dataset_version", "items_count", "references_count", "created_by",
                  "created_at"]
        read_only_fields = fields


class EvaluationSetFromVersionSerializer(StrictSerializer):
    name = StrictCharField(max_length=200)
    dataset_version = serializers.IntegerField(min_value=1, help_text="A built version of your organization's.")


class EvaluationSetUploadSerializer(StrictSerializer):
    name = StrictCharField(max_length=200)
    file = serializers.FileField(allow_empty_file=True, help_text=(
        'JSONL: one object per line, {"prompt": str, "reference": str?, "agent": str?, "id": str|int?}.'))


class EvaluationSerializer(serializers.ModelSerializer):
    started_by = serializers.CharField(source="started_by.username", read_only=True, default=None)
    api_key = serializers.CharField(source="api_key.prefix", read_only=True, default=None,
                                    help_text="The prefix of the evaluation key its runs are charged to.")
    stopped_by_budget = serializers.BooleanField(read_only=True)
    progress = serializers.SerializerMethodField(help_text="processed / total, 0 to 1.")

    class Meta:
        model = Evaluation
        fields = ["id", "evaluation_set", "targets", "agent", "max_tokens", "state", "stopped_by_budget", "processed",
                  "total", "progress", "message", "started_by", "api_key", "created_at", "started_at",
                  "finished_at"]
        read_only_fields = fields

    def get_progress(self, evaluation) -> float:
        if not evaluation.total:
            return 1.0 if evaluation.finished_at else 0.0
        return round(min(1.0, evaluation.processed / evaluation.total), 4)


class EvaluationStartSerializer(StrictSerializer):
    evaluation_set = serializers.IntegerField(min_value=1)
    targets = serializers.ListField(child=StrictCharField(max_length=100), min_length=1,
                                    max_length=evaluations.MAX_TARGETS,
                                    help_text="Model names (GET /v1/models) or relay-<agent>; routing settings "
                                              "live on a model, so compare routing by comparing model names.")
    agent = StrictCharField(max_length=32, default="general",
                            help_text="The agent of items that name none (relay-<agent> targets pick theirs).")
    max_tokens = serializers.IntegerField(min_value=1, max_value=8192, default=512)

    def validate_agent(self, agent):
        if agent not in AGENT_PERMISSIONS:
            raise serializers.ValidationError(f"Unknown agent {agent!r}.")
        return agent

    def validate_targets(self, targets):
        if len(set(targets)) != len(targets):
            raise serializers.ValidationError("Each target once.")
        problems = [problem for problem in map(evaluations.target_problem, targets) if problem]
        if problems:
            raise serializers.ValidationError(problems)
        return targets


class EvaluationResultSerializer(serializers.ModelSerializer):
    position = serializers.IntegerField(source="item.position", read_only=True)
    item_id = serializers.CharField(source="item.external_id", read_only=True)
    prompt = serializers.CharField(source="item.prompt", read_only=True)
    reference = serializers.CharField(source="item.reference", read_only=True)

    class Meta:
        model = EvaluationResult
        fields = ["position", "item_id", "target", "status", "prompt", "reference", "answer", "quality_score",
                  "agreement", "agreement_kind", "latency_ms", "cost", "conversation_id", "message_id"]
        read_only_fields = fields


class _Histogram(serializers.Serializer):
    to = serializers.FloatField()
    count = serializers.IntegerField()

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.FloatField()
        return fields


class _Quality(serializers.Serializer):
    mean = serializers.FloatField(allow_null=True)
    p50 = serializers.FloatField(allow_null=True)
    count = serializers.IntegerField()
    histogram = _Histogram(many=True)


class _Agreement(serializers.Serializer):
    exact_match = serializers.FloatField(allow_null=True, help_text="Share of math references matched exactly.")
    exact_scored = serializers.IntegerField()
    f1 = serializers.FloatField(allow_null=True, help_text="Mean token-level F1 over text references.")
    f1_scored = serializers.IntegerField()


class _Latency(serializers.Serializer):
    p50 = serializers.IntegerField(allow_null=True)
    p95 = serializers.IntegerField(allow_null=True)


class _Cost(serializers.Serializer):
    total = serializers.DecimalField(max_digits=18, decimal_places=10, coerce_to_string=True, allow_null=True)
    per_item = serializers.DecimalField(max_digits=18, decimal_places=10, coerce_to_string=True, allow_null=True)


class _TargetFigures(serializers.Serializer):
    target = serializers.CharField()
    items = serializers.IntegerField()
    finished = serializers.IntegerField()
    complete = serializers.IntegerField()
    statuses = serializers.DictField(child=serializers.IntegerField())
    quality = _Quality()
    agreement = _Agreement()
    latency_ms = _Latency()
    cost = _Cost()


class ComparisonSerializer(serializers.Serializer):
    """For the schema: the comparison is built by training.evaluations.comparison."""

    evaluation = serializers.IntegerField()
    evaluation_set = serializers.IntegerField()
    state = serializers.CharField()
    stopped_by_budget = serializers.BooleanField()
    message = serializers.CharField()
    finished = serializers.IntegerField()
    total = serializers.IntegerField()
    targets = _TargetFigures(many=True)

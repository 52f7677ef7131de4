"""Evaluation API (/api/v1/training/evaluation-sets/, /api/v1/training/evaluations/): manage_training.

Thin: parsing and reads in training.evaluations, writes in training.actions.evaluations.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from accounts.permissions import holds, request_key
from accounts.scoping import ScopedViewSet, restrict
from agents.registry import may_use
from relay.api.errors import PayloadTooLarge
from relay.api.parsers import BoundedJSONParser
from relay.http import client_ip
from training import evaluations, services
from training.actions import evaluations as evaluation_actions
from training.api.evaluation_serializers import (
    ComparisonSerializer,
    EvaluationResultSerializer,
    EvaluationSerializer,
    EvaluationSetFromVersionSerializer,
    EvaluationSetSerializer,
    EvaluationSetUploadSerializer,
    EvaluationStartSerializer,
)
from training.api.views import MANAGE, Conflict, ConsentRequired, Gone, caller_organization
from training.models import DatasetVersion
from training.models_evaluation import Evaluation, EvaluationSet


class EvaluationSetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                           ScopedViewSet):
    """Evaluation sets of your organization: from a built dataset version (POST) or a JSONL upload (POST upload/)."""

    required_permission = MANAGE
    queryset = EvaluationSet.objects.select_related("created_by")
    serializer_class = EvaluationSetSerializer
    parser_classes = [BoundedJSONParser]

    def check_permissions(self, request):
        super().check_permissions(request)
        # A set made from a version copies its rows out (its results show them): a download by another name.
        if self.action == "create" and not holds(request.user, request_key(request), "export_data"):
            self.permission_denied(request, message="Making a set from a dataset version needs export_data.")

    @extend_schema(request=EvaluationSetFromVersionSerializer, responses={201: EvaluationSetSerializer},
                   summary="Make an evaluation set from a built dataset version (questions, answers as "
                           "references); needs export_data too")
    def create(self, request):
        data = EvaluationSetFromVersionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = restrict(DatasetVersion, request.user, request_key(request)).filter(
            pk=data.validated_data["dataset_version"]).first()
        if version is None:
            raise ValidationError({"dataset_version": ["No such dataset version."]})
        try:
            items = evaluations.version_items(version)
        except services.NotDownloadable as error:
            if error.withdrawn:
                raise Gone(str(error)) from None
            raise Conflict(str(error), code="not_built") from None
        except services.ConsentRequired as error:  # a set copies the version's rows out, as a download does
            raise ConsentRequired(str(error)) from None
        except evaluations.SetError as error:
            raise ValidationError({"dataset_version": [str(error)]}) from None
        created = evaluation_actions.create_set(caller_organization(request), actor=request.user,
                                                name=data.validated_data["name"], items=items, version=version)
        return Response(EvaluationSetSerializer(created).data, status=status.HTTP_201_CREATED)

    @extend_schema(request={"multipart/form-data": EvaluationSetUploadSerializer},
                   responses={201: EvaluationSetSerializer},
                   summary="Upload an evaluation set as JSONL (each line checked; errors name the line)")
    @action(detail=False, methods=["post"], parser_classes=[MultiPartParser])
    def upload(self, request):
        data = EvaluationSetUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > evaluations.max_upload_bytes():
            raise PayloadTooLarge(f"The file is larger than {evaluations.max_upload_bytes()} bytes.")
        try:
            items = evaluations.parse_upload(upload.read())
        except evaluations.SetError as error:
            raise ValidationError({"file": [str(error)]}) from None
        created = evaluation_actions.create_set(caller_organization(request), actor=request.user,
                                                name=data.validated_data["name"], items=items)
        return Response(EvaluationSetSerializer(created).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        evaluation_actions.delete_set(instance, actor=self.request.user)


class EvaluationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """Evaluations: a set run against models (a Celery task, charged to your own evaluation key), compared."""

    required_permission = MANAGE
    queryset = Evaluation.objects.select_related("started_by", "api_key", "evaluation_set")
    serializer_class = EvaluationSerializer
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=EvaluationStartSerializer, responses={202: EvaluationSerializer},
                   summary="Start an evaluation (follow its progress here; the comparison when it ends)")
    def create(self, request):
        data = EvaluationStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        evaluation_set = restrict(EvaluationSet, request.user, request_key(request)).filter(
            pk=values["evaluation_set"]).first()
        if evaluation_set is None:
            raise NotFound("No such evaluation set.")
        if request.user.organization_id is None:
            raise PermissionDenied("Evaluations belong to an organization; this account has none.")
        if not may_use(request.user, request_key(request), values["agent"]):
            raise PermissionDenied(f"You may not use the {values['agent']} agent.")
        evaluation = evaluation_actions.start_evaluation(evaluation_set, actor=request.user, targets=values["targets"],
                                                         agent=values["agent"], max_tokens=values["max_tokens"],
                                                         via_key=request_key(request),
                                                         client_ip=client_ip(request.META))
        evaluation.refresh_from_db()  # an eager run has already finished
        return Response(EvaluationSerializer(evaluation).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=ComparisonSerializer,
                   summary="Per target, side by side: quality distribution, agreement, latency, cost")
    @action(detail=True, methods=["get"])
    def comparison(self, request, pk=None):
        return Response(evaluations.comparison(self.get_object()))

    @extend_schema(responses=EvaluationResultSerializer(many=True), summary="Each item's answer per target")
    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        evaluation = self.get_object()
        # An item's prompt and reference are a version's questions and answers: the same copy out as a
        # download, so the same permission (the comparison's aggregates need none).
        if evaluation.evaluation_set.source == EvaluationSet.Source.DATASET and \
                not holds(request.user, request_key(request), "export_data"):
            self.permission_denied(request, message="The results of a set made from a dataset version need "
                                                    "export_data.")
        found = evaluations.results_of(evaluation)
        page = self.paginate_queryset(found)
        if page is not None:
            return self.get_paginated_response(EvaluationResultSerializer(page, many=True).data)
        return Response(EvaluationResultSerializer(found, many=True).data)

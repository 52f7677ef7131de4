"""Training API (/api/v1/training/): thin views over training.services (reads) and training.actions (writes).

Everything needs manage_training, a download export_data too; consent is changed by an
organization admin; a conversation's exclusion is its owner's.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response

from accounts.permissions import ADMIN, AUTHENTICATED, holds, request_key
from accounts.scoping import ScopedAPIView, ScopedViewSet
from agents.models import Conversation
from relay.http import RowsStreamingResponse
from training import services
from training.actions import builds, consent, datasets, exports
from training.api.serializers import (
    ConsentInputSerializer,
    ConsentSerializer,
    DatasetSerializer,
    DownloadQuerySerializer,
    ExclusionSerializer,
    VersionQuerySerializer,
    VersionSerializer,
)
from training.models import ConversationExclusion, Dataset, DatasetVersion, TrainingConsent

MANAGE = "manage_training"


class Gone(APIException):
    status_code = status.HTTP_410_GONE
    default_code = "withdrawn"
    default_detail = "This version was withdrawn."


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class ConsentRequired(Conflict):
    default_code = "training_consent_required"


class NotBuilt(Conflict):
    default_code = "not_built"


def caller_organization(request):
    organization = request.user.organization
    if organization is None:
        raise PermissionDenied("Training data belongs to an organization; this account has none.")
    return organization


class ConsentView(ScopedAPIView):
    """Whether the organization's interactions may be used for training (off until an admin turns it on)."""

    required_permission = {"GET": MANAGE, "PUT": ADMIN}
    scoped_model = TrainingConsent

    @extend_schema(responses=ConsentSerializer, summary="Training consent of your organization")
    def get(self, request):
        organization = caller_organization(request)
        return Response(ConsentSerializer(services.consent_of(organization, self.get_queryset())).data)

    @extend_schema(request=ConsentInputSerializer, responses=ConsentSerializer,
                   summary="Turn training on your organization's interactions on or off (organization admins)")
    def put(self, request):
        organization = caller_organization(request)
        data = ConsentInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = consent.set_consent(organization, enabled=data.validated_data["enabled"], actor=request.user)
        return Response(ConsentSerializer(result).data)


class ExclusionView(ScopedAPIView):
    """One of your conversations kept out of (or let back into) every future training build."""

    required_permission = AUTHENTICATED
    scoped_model = Conversation  # someone else's conversation: 404, audited as denied

    def conversation(self, pk) -> Conversation:
        found = self.get_queryset().filter(pk=pk).first()
        if found is None:
            raise NotFound("No such conversation.")
        return found

    def _state(self, conversation):
        exclusion = ConversationExclusion.objects.filter(conversation=conversation).first()
        return Response(ExclusionSerializer({"conversation": conversation.pk, "excluded": exclusion is not None,
                                             "reason": exclusion.reason if exclusion else None}).data)

    @extend_schema(responses=ExclusionSerializer, summary="Is this conversation excluded from training?")
    def get(self, request, pk):
        return self._state(self.conversation(pk))

    @extend_schema(request=None, responses=ExclusionSerializer, summary="Exclude your conversation from training")
    def post(self, request, pk):
        conversation = self.conversation(pk)
        consent.exclude_conversation(conversation, actor=request.user)
        return self._state(conversation)

    @extend_schema(request=None, responses=ExclusionSerializer, summary="Let your conversation back into training")
    def delete(self, request, pk):
        conversation = self.conversation(pk)
        try:
            consent.include_conversation(conversation, actor=request.user)
        except ValueError as error:
            raise Conflict(str(error)) from None
        return self._state(conversation)


class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                     mixins.DestroyModelMixin, ScopedViewSet):
    """Dataset definitions of your organization; POST .../build builds a new version."""

    required_permission = MANAGE
    queryset = Dataset.objects.all()
    serializer_class = DatasetSerializer

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if self.action == "create":
            context["organization"] = caller_organization(self.request)
        return context

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = datasets.create_dataset(caller_organization(self.request), actor=self.request.user,
                                                      **data)

    def perform_destroy(self, instance):
        datasets.delete_dataset(instance, actor=self.request.user)

    @extend_schema(request=None, responses={202: VersionSerializer},
                   summary="Build a new version (a Celery task; follow its progress on the version)")
    @action(detail=True, methods=["post"])
    def build(self, request, pk=None):
        dataset = self.get_object()
        try:
            version = builds.request_build(dataset, actor=request.user)
        except services.ConsentRequired as error:
            raise ConsentRequired(str(error)) from None
        version.refresh_from_db()  # an eager build has already run
        return Response(VersionSerializer(version).data, status=status.HTTP_202_ACCEPTED)


class _FirstRenderer(DefaultContentNegotiation):
    """`?format=` names the export format here, not a DRF renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class VersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """Built versions with their progress, counts and hash; `?dataset=` narrows the list."""

    required_permission = MANAGE
    queryset = DatasetVersion.objects.select_related("dataset")
    serializer_class = VersionSerializer
    content_negotiation_class = _FirstRenderer

    def get_queryset(self):
        versions = super().get_queryset()
        if self.action == "list":
            query = VersionQuerySerializer(data=self.request.query_params)
            query.is_valid(raise_exception=True)
            if "dataset" in query.validated_data:
                versions = versions.filter(dataset_id=query.validated_data["dataset"])
        return versions

    def check_permissions(self, request):
        super().check_permissions(request)
        if self.action == "download" and not holds(request.user, request_key(request), "export_data"):
            self.permission_denied(request, message="Downloading training data needs export_data.")

    @extend_schema(parameters=[DownloadQuerySerializer,
                               OpenApiParameter("format", str, enum=["chat", "preference", "reward"])],
                   responses={(200, "application/jsonl"): OpenApiTypes.STR},
                   summary="Download a built version as JSONL (chat, preference or reward); needs export_data too")
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        version = self.get_object()
        query = DownloadQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        fmt, split = query.validated_data["format"], query.validated_data["split"]
        try:
            lines = exports.export_version(version, actor=request.user, fmt=fmt, split=split)
        except services.NotDownloadable as error:
            if error.withdrawn:
                raise Gone(str(error)) from None
            raise NotBuilt(str(error)) from None
        except services.ConsentRequired as error:  # consent off: built versions stay, closed until it is on
            raise ConsentRequired(str(error)) from None
        except ValueError as error:
            raise ValidationError({"format": [str(error)]}) from None
        response = RowsStreamingResponse((line.encode() for line in lines), content_type="application/jsonl")
        response["Content-Disposition"] = (
            f'attachment; filename="dataset-{version.dataset_id}-v{version.number}-{fmt}-{split}.jsonl"')
        return response

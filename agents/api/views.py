"""Conversations, documents, feedback and the agent list (DRF); model calls are in run_views.py."""

from django.db import transaction
from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Team, User
from accounts.permissions import AUTHENTICATED, request_key
from accounts.scoping import ScopedAPIView, ScopedViewSet
from agents import documents, heavy
from agents.api.serializers import (
    AgentInfoSerializer,
    ConversationDetailSerializer,
    ConversationSerializer,
    DocumentSerializer,
    DocumentUploadSerializer,
    FeedbackSerializer,
    MessageSerializer,
    ShareSerializer,
)
from agents.ingest import DocumentError
from agents.models import Conversation, Document, Message
from agents.providers.catalog import available_models
from agents.registry import all_agents, may_use
from relay.api.errors import PayloadTooLarge, Unprocessable
from relay.api.parsers import BoundedJSONParser


class AgentListView(APIView):
    required_permission = AUTHENTICATED

    @extend_schema(responses=AgentInfoSerializer(many=True), summary="The agents you may use, and their models")
    def get(self, request):
        models = [m.name for m in available_models()]
        key = request_key(request)
        agents = [
            {"name": a.name, "title": a.title, "description": a.description, "tools": [t.name for t in a.tools],
             "models": models, "default_model": models[0]}
            for a in all_agents().values() if may_use(request.user, key, a.name)
        ]
        return Response(agents)


class ConversationViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                          mixins.DestroyModelMixin, ScopedViewSet):
    """The caller's own conversations; the detail includes the messages."""

    required_permission = AUTHENTICATED
    queryset = Conversation.objects.all()

    def get_queryset(self):
        conversations = super().get_queryset()
        if self.action == "retrieve":
            conversations = conversations.prefetch_related("messages")
        return conversations

    def get_serializer_class(self):
        return ConversationDetailSerializer if self.action == "retrieve" else ConversationSerializer

    def perform_create(self, serializer):
        if not may_use(self.request.user, request_key(self.request), serializer.validated_data["agent"]):
            raise PermissionDenied("You may not use this agent.")
        serializer.save(user=self.request.user, organization_id=self.request.user.organization_id)


class MessageFeedbackView(ScopedAPIView):
    required_permission = AUTHENTICATED
    scoped_model = Message  # someone else's answer: 404, audited as denied

    @extend_schema(request=FeedbackSerializer, responses=MessageSerializer,
                   summary="Rate an answer: adjusts its quality score")
    def post(self, request, pk):
        data = FeedbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            message = self.scoped(Message.objects.select_for_update()).filter(
                pk=pk, role=Message.Role.ASSISTANT).first()
            if message is None:
                from rest_framework.exceptions import NotFound

                raise NotFound("No such answer.")
            rating = data.validated_data["rating"]
            base = message.quality_auto if message.quality_auto is not None else 0.5
            # Feedback moves the automatic score a quarter of the scale, within [0, 1].
            message.feedback = rating
            message.quality_score = min(1.0, max(0.0, base + 0.25 * rating))
            message.save(update_fields=["feedback", "quality_score"])
        return Response(MessageSerializer(message).data)


def _upload_error(error: DocumentError):
    """413 for a ceiling on size (decoded bytes, text), 422 for the parse-time ceiling, else 400 on the file."""
    if error.status == 413:
        return PayloadTooLarge(str(error))
    if error.status == 422:
        return Unprocessable(str(error))
    return ValidationError({"file": [str(error)]})


class DocumentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                      mixins.DestroyModelMixin, ScopedViewSet):
    """RAG documents you may see: your own, shared with you or your team, and Relay's own docs."""

    serializer_class = DocumentSerializer
    queryset = Document.objects.select_related("owner").annotate(chunk_count=Count("chunks")).order_by(
        "builtin", "-created_at")
    parser_classes = [MultiPartParser]
    required_permission = {"GET": AUTHENTICATED, "POST": "upload_documents", "DELETE": "delete_documents"}

    @extend_schema(request={"multipart/form-data": DocumentUploadSerializer}, responses={201: DocumentSerializer},
                   summary="Upload a text, Markdown, HTML or PDF document")
    def create(self, request):
        data = DocumentUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        try:
            with heavy.heavy_slot_sync(request.user):  # 429 busy beyond the host's or the user's slots
                document = documents.store_document(name=upload.name, data=upload.read(),
                                                    content_type=upload.content_type, owner=request.user)
        except DocumentError as error:
            raise _upload_error(error) from None
        document.chunk_count = document.chunks.count()
        return Response(DocumentSerializer(document).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, document):
        if not documents.may_manage(self.request.user, document):
            raise PermissionDenied("Only the owner or an admin may delete this document.")
        document.delete()

    @extend_schema(request=ShareSerializer, responses=DocumentSerializer,
                   summary="Share a document with users or teams of your organization")
    @action(detail=True, methods=["post"], parser_classes=[BoundedJSONParser])
    def share(self, request, pk=None):
        document = self.get_object()
        if not documents.may_manage(request.user, document):
            raise PermissionDenied("Only the owner or an admin may share this document.")
        data = ShareSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = document.organization_id
        users = list(User.objects.filter(pk__in=data.validated_data["users"], organization_id=org))
        teams = list(Team.objects.filter(pk__in=data.validated_data["teams"], organization_id=org))
        if len(users) != len(set(data.validated_data["users"])) or len(teams) != len(set(data.validated_data["teams"])):
            raise ValidationError({"users": ["Share only with users and teams of the document's organization."]})
        documents.share_document(document, users=users, teams=teams)
        return Response(DocumentSerializer(self.get_queryset().get(pk=document.pk)).data)

"""Conversations, documents, feedback and the agent list (DRF); model calls are in run_views.py."""

from django.db.models import Count, Exists, OuterRef, Q
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import AUTHENTICATED, request_key
from accounts.scoping import ScopedAPIView, ScopedViewSet
from agents import documents, heavy
from agents.actions import conversations, feedback
from agents.actions import documents as document_actions
from agents.api.serializers import (
    AgentInfoSerializer,
    ConversationDetailSerializer,
    ConversationSearchSerializer,
    ConversationSerializer,
    ConversationUpdateSerializer,
    DocumentSerializer,
    DocumentUploadSerializer,
    FeedbackSerializer,
    MessageSerializer,
    ShareSerializer,
)
from agents.ingest import DocumentError
from agents.listing import listed
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
             "models": models, "default_model": models[0], "examples": list(a.examples),
             "without_model": a.without_model}
            for a in all_agents().values() if may_use(request.user, key, a.name)
        ]
        return Response(agents)


def search_conversations(conversations, text: str):
    """Conversations whose title or any message contains `text` (case-insensitive)."""
    if not text:
        return conversations
    in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=text)
    return conversations.filter(Q(title__icontains=text) | Exists(in_messages))


class ConversationViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                          mixins.DestroyModelMixin, ScopedViewSet):
    """The caller's own conversations, pinned first; the detail includes the messages (a tree: see `parent`).

    `?search=` keeps those whose title or messages contain the text; PATCH renames or pins one.
    """

    required_permission = AUTHENTICATED
    queryset = Conversation.objects.all()
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        conversations = super().get_queryset()
        if self.action == "retrieve":
            conversations = conversations.prefetch_related("messages")
        if self.action == "list":
            query = ConversationSearchSerializer(data={"search": self.request.query_params.get("search", "")})
            query.is_valid(raise_exception=True)
            conversations = search_conversations(listed(conversations), query.validated_data.get("search", ""))
            conversations = conversations.order_by("-pinned", "-updated_at")
        return conversations

    @extend_schema(request=ConversationUpdateSerializer, responses=ConversationSerializer,
                   summary="Rename or pin one of your conversations")
    def partial_update(self, request, pk=None):
        conversation = self.get_object()
        data = ConversationUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = conversations.update_conversation(conversation, actor=request.user, **data.validated_data)
        return Response(ConversationSerializer(conversation).data)

    def get_serializer_class(self):
        return ConversationDetailSerializer if self.action == "retrieve" else ConversationSerializer

    def perform_create(self, serializer):
        data = serializer.validated_data
        if not may_use(self.request.user, request_key(self.request), data["agent"]):
            raise PermissionDenied("You may not use this agent.")
        serializer.instance = conversations.create_conversation(self.request.user, agent=data["agent"],
                                                                title=data.get("title", ""))

    def perform_destroy(self, conversation):
        conversations.delete_conversation(conversation, actor=self.request.user)


class MessageFeedbackView(ScopedAPIView):
    required_permission = AUTHENTICATED
    scoped_model = Message  # someone else's answer: 404, audited as denied

    @extend_schema(request=FeedbackSerializer, responses=MessageSerializer,
                   summary="Rate an answer: adjusts its quality score")
    def post(self, request, pk):
        data = FeedbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            message = feedback.record_feedback(request.user, pk, data.validated_data["rating"])
        except Message.DoesNotExist:
            raise NotFound("No such answer.") from None
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
                document = document_actions.upload_document(request.user, name=upload.name, data=upload.read(),
                                                             content_type=upload.content_type)
        except DocumentError as error:
            raise _upload_error(error) from None
        document.chunk_count = document.chunks.count()
        return Response(DocumentSerializer(document).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, document):
        if not documents.may_manage(self.request.user, document, request_key(self.request)):
            raise PermissionDenied("Only the owner or an admin may delete this document.")
        document_actions.delete_document(document, actor=self.request.user)

    @extend_schema(request=ShareSerializer, responses=DocumentSerializer,
                   summary="Share a document with users or teams of your organization")
    @action(detail=True, methods=["post"], parser_classes=[BoundedJSONParser])
    def share(self, request, pk=None):
        document = self.get_object()
        if not documents.may_manage(request.user, document, request_key(request)):
            raise PermissionDenied("Only the owner or an admin may share this document.")
        data = ShareSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        document_actions.share_document(request.user, document, user_ids=data.validated_data["users"],
                                        team_ids=data.validated_data["teams"])
        return Response(DocumentSerializer(self.get_queryset().get(pk=document.pk)).data)

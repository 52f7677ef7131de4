"""Thin HTTP layer over accounts.actions (writes) and accounts.services (reads); every view declares
`required_permission`."""

from django.contrib.auth.models import Group
from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.actions import keys, teams, users
from accounts.api.serializers import (
    APIKeyCreateSerializer,
    APIKeySerializer,
    IssuedKeySerializer,
    MeSerializer,
    TeamSerializer,
    UserCreateSerializer,
    UserSerializer,
    UserUpdateSerializer,
    me_payload,
)
from accounts.models import APIKey, Team, User
from accounts.permissions import AUTHENTICATED, check_member_change, request_key
from accounts.roles import effective_permissions
from accounts.scoping import ScopedViewSet
from accounts.services import key_permissions


class MeView(APIView):
    required_permission = AUTHENTICATED

    @extend_schema(responses=MeSerializer, summary="Who am I: user, organization, role, effective permissions")
    def get(self, request):
        return Response(me_payload(request.user, request_key(request)))


class TeamViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    serializer_class = TeamSerializer
    required_permission = "manage_users"
    queryset = Team.objects.order_by("name")

    def perform_create(self, serializer):
        organization = self.request.user.organization
        if organization is None:
            raise PermissionDenied("Only members of an organization can create teams.")
        serializer.instance = teams.create_team(organization, serializer.validated_data["name"],
                                                actor=self.request.user)


class UserViewSet(mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin,
                  mixins.DestroyModelMixin, mixins.ListModelMixin, ScopedViewSet):
    """Users of the caller's organization. DELETE deactivates (history and audit stay)."""

    serializer_class = UserSerializer
    required_permission = "manage_users"
    queryset = User.objects.select_related("organization", "team").prefetch_related(
        Prefetch("groups", queryset=Group.objects.only("name"))
    ).order_by("username")
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @extend_schema(request=UserCreateSerializer, responses={201: UserSerializer})
    def create(self, request):
        data = UserCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = request.user.organization
        if organization is None:
            raise PermissionDenied("Only members of an organization can create users in it.")
        check_member_change(request.user, request_key(request), role=data.validated_data["role"],
                            password=bool(data.validated_data.get("password")))
        user = users.create_user(actor=request.user, organization=organization, **data.validated_data)
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=UserUpdateSerializer, responses=UserSerializer)
    def partial_update(self, request, pk=None):
        user = self.get_object()
        data = UserUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        check_member_change(request.user, request_key(request), role=data.validated_data.get("role"), member=user)
        user = users.update_user(request.user, user, **data.validated_data)
        return Response(UserSerializer(user).data)

    @extend_schema(exclude=True)
    def update(self, request, *args, **kwargs):
        return self.partial_update(request, *args, **kwargs)

    @extend_schema(responses={204: None}, summary="Deactivate a user")
    def destroy(self, request, pk=None):
        member = self.get_object()
        check_member_change(request.user, request_key(request), member=member)
        users.update_user(request.user, member, is_active=False)
        return Response(status=status.HTTP_204_NO_CONTENT)


class APIKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """The caller's own API keys. Secrets appear only in the create and rotate answers.

    Through a key, only the keys within its powers (accounts.services.key_within): any other is
    404 to every action, so a narrow key can neither find nor take over a wider one.
    """

    serializer_class = APIKeySerializer
    required_permission = AUTHENTICATED
    queryset = APIKey.objects.order_by("-created_at")

    @extend_schema(request=APIKeyCreateSerializer, responses={201: IssuedKeySerializer})
    def create(self, request):
        data = APIKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = request_key(request)
        grantable = key_permissions(key) if key is not None else effective_permissions(request.user)
        issued = keys.create_api_key(request.user, grantable=grantable, parent=key, **data.validated_data)
        return Response(_issued(issued), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=APIKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        return Response(APIKeySerializer(keys.revoke_api_key(self.get_object())).data)

    @extend_schema(request=None, responses=IssuedKeySerializer)
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        return Response(_issued(keys.rotate_api_key(self.get_object())))


def _issued(issued: services.IssuedKey) -> dict:
    data = APIKeySerializer(issued.key).data
    data["key"] = issued.secret
    return data

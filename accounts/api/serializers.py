from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import APIKey, Team, User
from accounts.roles import PERMISSION_CODENAMES, effective_permissions, role_of
from relay.api.serializers import StrictModelSerializer, StrictSerializer


class TeamSerializer(StrictModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_name(self, value):
        value = value.strip()
        if not value:
            raise serializers.ValidationError("A team needs a name.")
        return value


class UserSerializer(StrictModelSerializer):
    role = serializers.SerializerMethodField()
    team = serializers.PrimaryKeyRelatedField(read_only=True)
    organization = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = User
        fields = [
            "id", "username", "email", "first_name", "last_name", "role", "team", "organization",
            "is_active", "date_joined", "last_login",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_role(self, user) -> str | None:
        return role_of(user)


class UserCreateSerializer(StrictSerializer):
    username = serializers.RegexField(r"^[\w.@+-]+\Z", max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=150, default="")
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=150, default="")
    password = serializers.CharField(required=False, write_only=True, min_length=1, max_length=128,
                                     style={"input_type": "password"})
    role = serializers.CharField(max_length=150)
    team = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class UserUpdateSerializer(StrictSerializer):
    email = serializers.EmailField(required=False, allow_blank=True)
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=150)
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=150)
    role = serializers.CharField(required=False, max_length=150)
    team = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    is_active = serializers.BooleanField(required=False)


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    organization = serializers.DictField(allow_null=True)
    team = serializers.DictField(allow_null=True)
    role = serializers.CharField(allow_null=True)
    permissions = serializers.ListField(child=serializers.CharField())
    auth = serializers.DictField()


class APIKeySerializer(StrictModelSerializer):
    prefix = serializers.SerializerMethodField()
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = APIKey
        fields = [
            "id", "name", "prefix", "scopes", "allowed_agents", "allowed_models", "allowed_ips",
            "requests_per_minute", "tokens_per_minute", "expires_at", "revoked_at", "last_used_at",
            "created_at", "is_active", "parent",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_prefix(self, key) -> str:
        return f"rk_{key.prefix}"


class APIKeyCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=PERMISSION_CODENAMES), required=False, max_length=len(PERMISSION_CODENAMES),
        help_text="Defaults to every permission the caller holds.",
    )
    allowed_agents = serializers.ListField(child=serializers.CharField(max_length=50), required=False, max_length=50)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=100)
    allowed_ips = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=100)
    requests_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    tokens_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=10**9)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    expires_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)

    def validate(self, attrs):
        days = attrs.pop("expires_days", None)
        if days is not None:
            if attrs.get("expires_at"):
                raise serializers.ValidationError({"expires_days": "Give expires_at or expires_days, not both."})
            attrs["expires_at"] = timezone.now() + timedelta(days=days)
        return attrs


class IssuedKeySerializer(APIKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret. Shown once; store it now.")

    class Meta(APIKeySerializer.Meta):
        fields = APIKeySerializer.Meta.fields + ["key"]
        read_only_fields = fields


def me_payload(user, key) -> dict:
    from accounts.services import key_permissions

    permissions = key_permissions(key) if key is not None else effective_permissions(user)
    return {
        "user": UserSerializer(user).data,
        "organization": {"id": user.organization_id, "name": user.organization.name} if user.organization_id else None,
        "team": {"id": user.team_id, "name": user.team.name} if user.team_id else None,
        "role": role_of(user),
        "permissions": sorted(permissions),
        "auth": {"method": "api_key", "key_prefix": f"rk_{key.prefix}"} if key is not None else {"method": "user"},
    }

from rest_framework import serializers

from audit.actions import STATUSES
from audit.export import event_dict
from audit.models import AuditEvent
from relay.api.serializers import StrictSerializer


class EventFilterSerializer(StrictSerializer):
    actor = serializers.CharField(required=False, max_length=150, help_text="Username of the actor.")
    action = serializers.CharField(required=False, max_length=64, help_text='e.g. "api_key.revoked".')
    status = serializers.ChoiceField(required=False, choices=STATUSES)
    resource = serializers.CharField(required=False, max_length=255, help_text='e.g. "api_key:7".')
    since = serializers.DateTimeField(required=False, help_text="ISO 8601; inclusive.")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601; exclusive.")


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["sequence", "time", "actor_id", "actor_name", "api_key_prefix", "organization_id", "action",
                  "resource", "status", "ip", "user_agent", "request_id", "metadata", "prev_hash", "hash", "version"]

    def to_representation(self, instance):
        return event_dict(instance)

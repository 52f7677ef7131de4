import re

from rest_framework import serializers

from agents.models import Conversation, Document, Message
from agents.registry import all_agents
from billing.api.serializers import MoneyText
from relay.api.serializers import SharedFieldsMixin, StrictCharField, StrictModelSerializer, StrictSerializer

MAX_QUERY_CHARS = 32_000
# Control characters other than tab and newlines carry no meaning in a question, and NUL cannot
# be stored in PostgreSQL text: they are dropped rather than refused.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(value: str) -> str:
    return _CONTROL.sub("", value)


def _bounded_image(source) -> None:
    """413 for an image whose header declares more pixels than Relay decodes, before any run starts."""
    from agents.tools.vision import ImageTooLarge, check_dimensions
    from relay.api.errors import PayloadTooLarge

    try:
        check_dimensions(source)
    except ImageTooLarge as error:
        raise PayloadTooLarge(str(error)) from None


class BoundedImageField(serializers.ImageField):
    def to_internal_value(self, data):
        if hasattr(data, "read") and hasattr(data, "seek"):
            _bounded_image(data)  # before Django's check, which calls a huge canvas "not a valid image"
        return super().to_internal_value(data)


class QuerySerializer(SharedFieldsMixin, StrictSerializer):
    query = StrictCharField(max_length=MAX_QUERY_CHARS, trim_whitespace=False, allow_blank=True, required=False,
                            help_text="The question; with `regenerate` it is the stored question's and may be left out.")
    agent_type = StrictCharField(max_length=32)
    conversation_id = serializers.UUIDField(required=False, allow_null=True)
    model = StrictCharField(max_length=100, required=False, allow_null=True, allow_blank=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=32768)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    cache = serializers.BooleanField(required=False, default=True,
                                     help_text="false skips the response cache for this request.")
    image = StrictCharField(required=False, allow_blank=False, max_length=2 * 1024 * 1024, trim_whitespace=False,
                            help_text="For the vision agent over SSE and WebSocket: the image, base64-encoded.")

    regenerate = serializers.UUIDField(required=False, allow_null=True,
                                       help_text="An answer of `conversation_id` to answer again: a new run whose "
                                                 "answer is a sibling version of that one.")
    edit = serializers.UUIDField(required=False, allow_null=True,
                                 help_text="A question of `conversation_id` that `query` replaces: the edited "
                                           "question and its answer are a new branch beside the old one.")

    parent = serializers.UUIDField(required=False, allow_null=True,
                                   help_text="The message of `conversation_id` the new question follows (the "
                                             "version shown); by default the conversation's latest message.")

    def validate(self, attrs):
        if attrs.get("parent") and (attrs.get("regenerate") or attrs.get("edit") or not attrs.get("conversation_id")):
            raise serializers.ValidationError({"parent": ["Only for a new question in `conversation_id`."]})
        if attrs.get("regenerate") and attrs.get("edit"):
            raise serializers.ValidationError({"edit": ["Regenerate an answer or edit a question, not both."]})
        if (attrs.get("regenerate") or attrs.get("edit")) and not attrs.get("conversation_id"):
            raise serializers.ValidationError({"conversation_id": ["Name the conversation of the message."]})
        if attrs.get("regenerate"):
            attrs["query"] = ""  # the runner asks the stored question again
        elif "query" not in attrs:
            raise serializers.ValidationError({"query": ["This field is required."]})
        return attrs

    def validate_image(self, value):
        import base64
        import binascii

        try:
            image = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("Not valid base64.") from None
        _bounded_image(image)
        return image

    def validate_query(self, value):
        value = clean_text(value)
        if not value.strip():
            raise serializers.ValidationError("The query is empty.")
        return value

    def validate_agent_type(self, value):
        if value not in all_agents():
            raise serializers.ValidationError(f"Unknown agent {value!r}; agents are {', '.join(sorted(all_agents()))}.")
        return value


class VisionSerializer(StrictSerializer):
    image = BoundedImageField(required=True, help_text="PNG, JPEG, GIF, WebP, BMP or TIFF.")
    question = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    conversation_id = serializers.UUIDField(required=False, allow_null=True)


class AnswerSerializer(serializers.Serializer):
    conversation_id = serializers.UUIDField()
    message_id = serializers.UUIDField()
    agent = serializers.CharField()
    model = serializers.CharField()
    answer = serializers.CharField()
    status = serializers.ChoiceField(choices=Message.Status.choices)
    tool_calls = serializers.ListField(child=serializers.DictField())
    errors = serializers.ListField(child=serializers.DictField())
    usage = serializers.DictField()


class MessageSerializer(serializers.ModelSerializer):
    cost = MoneyText()

    class Meta:
        model = Message
        fields = ["id", "parent", "role", "content", "agent", "model", "input_tokens", "output_tokens", "cost", "latency_ms",
                  "ttft_ms", "quality_score", "feedback", "tool_calls", "status", "error_code", "created_at"]
        read_only_fields = fields


class ConversationSerializer(StrictModelSerializer):
    class Meta:
        model = Conversation
        fields = ["id", "title", "agent", "pinned", "created_at", "updated_at"]
        read_only_fields = ["id", "pinned", "created_at", "updated_at"]

    def validate_agent(self, value):
        if value not in all_agents():
            raise serializers.ValidationError(f"Unknown agent {value!r}.")
        return value

    def validate_title(self, value):
        return clean_text(value)[:200]


MAX_TITLE_CHARS = 200


class StrictBooleanField(serializers.BooleanField):
    """true or false only: DRF's own also takes "yes", 1 and "on"."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class ConversationUpdateSerializer(StrictSerializer):
    """Rename or pin one of your conversations (PATCH): at least one of the two."""

    title = StrictCharField(required=False, max_length=MAX_TITLE_CHARS, allow_blank=False)
    pinned = StrictBooleanField(required=False)

    def validate_title(self, value):
        value = " ".join(clean_text(value).split())
        if not value:
            raise serializers.ValidationError("The title is empty.")
        return value

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError("Give a title or pinned.")
        return attrs


class ConversationSearchSerializer(StrictSerializer):
    search = StrictCharField(required=False, max_length=200, allow_blank=True, trim_whitespace=True)


class ConversationDetailSerializer(ConversationSerializer):
    messages = MessageSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = ConversationSerializer.Meta.fields + ["messages"]
        read_only_fields = fields


class FeedbackSerializer(StrictSerializer):
    rating = serializers.ChoiceField(choices=[1, -1], help_text="1 (good) or -1 (bad).")


class DocumentSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", default=None, read_only=True, allow_null=True)  # builtin docs: none
    chunk_count = serializers.IntegerField(read_only=True, default=None)

    class Meta:
        model = Document
        fields = ["id", "name", "title", "kind", "size", "owner", "builtin", "chunk_count", "created_at"]
        read_only_fields = fields


class DocumentUploadSerializer(StrictSerializer):
    file = serializers.FileField(allow_empty_file=False)


class ShareSerializer(StrictSerializer):
    users = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, default=list,
                                  max_length=500)
    teams = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, default=list,
                                  max_length=100)


class AgentInfoSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    tools = serializers.ListField(child=serializers.CharField())
    models = serializers.ListField(child=serializers.CharField())
    default_model = serializers.CharField()
    examples = serializers.ListField(child=serializers.CharField(), help_text="Example prompts for a new chat.")
    without_model = serializers.CharField(help_text="What the agent does with no language model configured.")


def content_problem(content) -> str | None:
    """What is wrong with a message's content in OpenAI's format, or None.

    A string, null (an assistant turn that only calls tools), or a list of parts, each an object
    with a string "type"; text (and an assistant's refusal) parts carry a string. Images pass to the
    model once checked (agents.api.openai_images). No other part type passes: a file part names a
    file in the upstream account Relay calls with (every tenant's), audio and others are not
    counted or checked here.
    """
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list):
        return "must be a string or a list of content parts"
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return 'has a part that is not an object with a string "type"'
        kind = part["type"]
        if kind in _STRING_PARTS and not isinstance(part.get(kind), str):
            return f'has a {kind} part whose "{kind}" is not a string'
        if kind not in _STRING_PARTS and kind != "image_url":
            return f"has a part of type {kind[:40]!r}: Relay passes on text and image_url parts only"
    return None


_STRING_PARTS = ("text", "refusal")
# What a model reads of a message, all of it counted by agents.tokenizer: nothing else is
# forwarded (a legacy `function_call`, or a stray key inside a part, would reach the model
# uncounted: past the tokens per minute, unreserved and, cut short, unbilled).
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def forwarded_message(message: dict) -> dict:
    """The message as it goes to the model: known keys only, each part and tool call with its own."""
    kept = {key: message[key] for key in _MESSAGE_KEYS if key in message}
    if isinstance(kept.get("content"), list):
        kept["content"] = [_forwarded_part(part) for part in kept["content"]]
    if isinstance(kept.get("tool_calls"), list):
        kept["tool_calls"] = [_forwarded_call(call) for call in kept["tool_calls"] if isinstance(call, dict)]
    return kept


def _forwarded_part(part):
    if not isinstance(part, dict) or part.get("type") not in (*_STRING_PARTS, "image_url"):
        return part  # content_problem has refused it already
    kind = part["type"]
    if kind != "image_url":
        return {"type": kind, kind: part.get(kind)}
    image = part.get("image_url")
    if isinstance(image, dict):
        image = {key: image[key] for key in ("url", "detail") if key in image}
    return {"type": kind, "image_url": image}


def _forwarded_call(call: dict) -> dict:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    return {**{key: call[key] for key in ("id", "type") if key in call},
            "function": {key: function[key] for key in ("name", "arguments") if key in function}}

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import Budget
from billing.money import MAX_LIMIT_USD, decimal_text, parse_amount
from billing.stats import PERIODS
from relay.api.serializers import StrictSerializer


@extend_schema_field({"type": "string", "format": "decimal", "example": "0.000123"})
class MoneyText(serializers.Field):
    """A read-only money amount as plain decimal text ("0.000123", "12.5", "0"), never "0E-9" or
    a column's ten decimal places (DRF's DecimalField keeps them)."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value) -> str:
        return decimal_text(value)


class BudgetInputSerializer(StrictSerializer):
    """Body of POST /api/v1/costs/budget (docs/design.md section 5)."""

    scope = serializers.ChoiceField(choices=Budget.SCOPES)
    target = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    period = serializers.ChoiceField(choices=Budget.PERIODS)
    # Text, not DecimalField: the message for NaN, 20 decimals or 1e12 should name the problem.
    limit_usd = serializers.CharField(max_length=64)
    hard = serializers.BooleanField(default=True)
    alert_thresholds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=100),
                                             required=False, default=list, max_length=20)

    def validate_limit_usd(self, value) -> Decimal:
        try:
            return parse_amount(value, field="limit_usd", allow_zero=False, maximum=MAX_LIMIT_USD)
        except ValueError as error:
            raise serializers.ValidationError(str(error))

    def validate_alert_thresholds(self, value):
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Thresholds must not repeat.")
        return sorted(value)


class StatsQuerySerializer(StrictSerializer):
    period = serializers.ChoiceField(choices=PERIODS, default="today")


class ExportQuerySerializer(StrictSerializer):
    start = serializers.DateTimeField(required=False, help_text="ISO time; records from here")
    end = serializers.DateTimeField(required=False, help_text="ISO time; records before this")

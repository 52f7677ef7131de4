"""Form fields for money in the admin, read by the one rule of billing.money."""

from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from billing.money import decimal_text, format_usd, parse_amount


class MoneyField(forms.DecimalField):
    """Django's DecimalField reads "٥" as 5 (Python's Decimal does); this one reads ASCII only.

    Range rules stay on the model fields' validators (prices up to 1000, limits above 0), which
    call the same parse_amount.
    """

    def to_python(self, value):
        if value in self.empty_values:
            return None
        try:
            return parse_amount(value, field=str(self.label or "The amount"), allow_zero=True)
        except ValueError as error:
            raise ValidationError(str(error), code="invalid") from None

    def prepare_value(self, value):
        # The column's ten decimal places ("0.0000000000", "2.5000000000") are noise in a form;
        # what the admin typed and got back (a string, on an error) is shown as typed.
        return decimal_text(value) if isinstance(value, Decimal | int) and not isinstance(value, bool) else value


MONEY_FORM_FIELDS = {"form_class": MoneyField}


def money_column(field: str, *, exact: bool = False, description: str | None = None):
    """A list column for a money field: format_usd (the display rule), or, for prices, which are
    rates an admin edits and must read to the last digit, the exact decimal text."""

    def column(obj):
        value = getattr(obj, field)
        if value is None:
            return "-"
        return f"${decimal_text(value)}" if exact else format_usd(value)

    column.short_description = description or field.replace("_", " ")
    column.admin_order_field = field
    column.__name__ = f"{field}_shown"
    return column

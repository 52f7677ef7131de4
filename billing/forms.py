"""Form fields for money in the admin, read by the one rule of billing.money."""

from django import forms
from django.core.exceptions import ValidationError

from billing.money import parse_amount


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


MONEY_FORM_FIELDS = {"form_class": MoneyField}

"""`{{ amount|usd }}` in templates: billing.money.format_usd, the one display rule for money."""

from django import template

from billing.money import format_usd

register = template.Library()


@register.filter
def usd(value) -> str:
    return format_usd(value)

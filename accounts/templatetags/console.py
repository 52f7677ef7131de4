"""{% console_nav as items %}: the pages the signed-in user may open (accounts.pages)."""

from django import template

from accounts.pages import nav_items

register = template.Library()


@register.simple_tag(takes_context=True)
def console_nav(context):
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return []
    return nav_items(request)

"""Console pages of the billing app: usage (everyone) and budgets (admins)."""

from django.shortcuts import render

from accounts.pages import may_open, page
from accounts.permissions import ADMIN
from billing import console, stats


@page()
def usage(request):
    user = request.user
    period = request.GET.get("period", console.DEFAULT_PERIOD)
    if period not in stats.PERIODS:
        period = console.DEFAULT_PERIOD
    context = {"period": period, "periods": console.PERIOD_LABELS, "has_organization": user.organization_id is not None,
               "can_export": may_open(user, "export_data"), "org_view": may_open(user, "view_metrics")}
    if context["has_organization"]:
        context["data"] = console.usage_page(user, period, with_organization=context["org_view"])
    return render(request, "console/usage.html", context)


@page(ADMIN)
def budgets(request):
    if request.user.organization_id is None:
        return render(request, "console/budgets.html", {"has_organization": False})
    data = console.budgets_page(request.user.organization)
    return render(request, "console/budgets.html", {"has_organization": True, **data})

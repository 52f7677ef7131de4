"""Cost API: thin views over billing.stats, billing.budget_changes (reads) and billing.actions
(writes) (docs/design.md section 5)."""

import csv
from decimal import Decimal

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import key_tree
from accounts.models import User
from accounts.permissions import ADMIN, AUTHENTICATED, holds, request_key
from accounts.scoping import ScopedAPIView
from accounts.services import PrivilegeRefused
from billing import budget_changes, stats
from billing.actions import budgets
from billing.api.serializers import BudgetInputSerializer, ExportQuerySerializer, StatsQuerySerializer
from billing.ledger import LedgerUnavailable
from billing.models import UsageRecord
from billing.money import decimal_text
from relay.http import RowsStreamingResponse

from .errors import LedgerUnavailableError

PERIOD_PARAM = OpenApiParameter("period", str, enum=list(stats.PERIODS), description="default today")


def caller_organization(request):
    organization = request.user.organization
    if organization is None:
        raise PermissionDenied("Costs belong to an organization; this account has none.")
    return organization


def period_of(request) -> str:
    query = StatsQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data["period"]


class CostStatsView(APIView):
    """The caller's organization: totals, tokens, requests, by model, agent, status and day."""

    required_permission = "view_metrics"

    @extend_schema(parameters=[PERIOD_PARAM], responses=OpenApiTypes.OBJECT, summary="Organization cost statistics")
    def get(self, request):
        return Response(stats.organization_stats(caller_organization(request), period_of(request)))


class BreakdownView(ScopedAPIView):
    """Spend per user and per API key: an organization's admins see everyone's, others their own."""

    required_permission = AUTHENTICATED
    scoped_model = UsageRecord

    @extend_schema(parameters=[PERIOD_PARAM], responses=OpenApiTypes.OBJECT, summary="Spend per user and per key")
    def get(self, request):
        organization = caller_organization(request)
        period = period_of(request)
        start, end = stats.window(period, timezone.now(), organization.time_zone)
        # Costs belong to the caller's organization, so even a superuser asks about its users only.
        records = self.scoped(UsageRecord.objects.filter(organization=organization))
        return Response({"period": period, **stats.breakdown(records, start=start, end=end,
                                                             time_zone=organization.time_zone)})


class UserUsageView(ScopedAPIView):
    """One user's usage: your own, or anyone's in your organization with view_metrics (or as admin)."""

    required_permission = AUTHENTICATED
    scoped_model, lookup_url_kwarg = User, "user_id"  # another organization's user: 404, audited as denied

    @extend_schema(parameters=[PERIOD_PARAM], responses=OpenApiTypes.OBJECT, summary="One user's usage")
    def get(self, request, user_id: int):
        organization = caller_organization(request)
        # Costs belong to the caller's organization, so even a superuser asks about its users only.
        target = self.scoped(User.objects.filter(organization=organization)).filter(pk=user_id).select_related(
            "organization").first()
        if target is None:
            raise NotFound()  # another organization's user is not there for this caller
        if target.pk != request.user.pk:
            key = request_key(request)
            if not (holds(request.user, key, "view_metrics") or holds(request.user, key, ADMIN)):
                raise PermissionDenied("You may see only your own usage without view_metrics.")
        return Response(stats.user_usage(target, period_of(request)))


class BudgetView(APIView):
    """GET: the organization's budgets with current spend. POST: set a budget (admins)."""

    required_permission = {"GET": "view_metrics", "POST": ADMIN}

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Budgets with this period's spend")
    def get(self, request):
        try:
            rows = budget_changes.budgets_with_spend(caller_organization(request))
        except LedgerUnavailable:
            raise LedgerUnavailableError()
        return Response({"results": rows})

    @extend_schema(request=BudgetInputSerializer, responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT},
                   summary="Set a budget (creates, or updates the same target+period)")
    def post(self, request):
        organization = caller_organization(request)
        body = BudgetInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = request_key(request)
        if key is not None and body.validated_data["scope"] == "api_key" and \
                body.validated_data["target"] in {link.pk for link in key_tree.chain(key)}:
            # A key under a hard budget (set by its admin) would otherwise lift its own cap.
            raise PrivilegeRefused("A key cannot set the budget of itself or of a key above it.")
        try:
            budget, created = budgets.set_budget(actor=request.user, organization=organization, **body.validated_data)
        except LedgerUnavailable:
            raise LedgerUnavailableError()
        row = next(r for r in budget_changes.budgets_with_spend(organization) if r["id"] == budget.pk)
        return Response(row, status=201 if created else 200)


class ForecastView(APIView):
    required_permission = "view_metrics"

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Month-end projection and the date each budget runs out")
    def get(self, request):
        return Response(stats.forecast(caller_organization(request)))


class _Echo:
    def write(self, value):
        return value


class ExportView(APIView):
    """The organization's usage records as CSV, streamed (no row limit, constant memory)."""

    required_permission = "export_data"

    @extend_schema(parameters=[ExportQuerySerializer], responses={(200, "text/csv"): str},
                   summary="Usage records as CSV")
    def get(self, request):
        organization = caller_organization(request)
        query = ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = stats.export_rows(organization, query.validated_data.get("start"), query.validated_data.get("end"))
        writer = csv.writer(_Echo())
        header = [column.replace("__", "_") for column in stats.EXPORT_COLUMNS]
        lines = (writer.writerow(row) for row in _with_header(header, rows))
        response = RowsStreamingResponse(lines, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="relay-usage-{organization.slug}.csv"'
        return response


def _cell(value):
    if isinstance(value, Decimal):
        return decimal_text(value)  # "0.5", not the column's "0.5000000000"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet must not run a user-chosen name as a formula
    return value


def _with_header(header, rows):
    yield header
    for row in rows:
        yield [_cell(value) for value in row]

"""The audit trail over HTTP: a filtered, cursor-paginated list (admins) and a JSONL export.

Here, not in audit: who may read which events is an accounts rule, and audit sits below accounts.
"""

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination

from accounts.permissions import ADMIN
from accounts.scoping import Scoped, ScopedAPIView
from audit import actions, queries
from audit.api.serializers import AuditEventSerializer, EventFilterSerializer
from audit.export import iter_jsonl
from audit.models import AuditEvent
from audit.services import record
from relay.http import RowsStreamingResponse

_PAGING_PARAMS = {"cursor", "page_size"}


class EventCursor(CursorPagination):
    ordering = "-sequence"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _filters(request, *, default_span=None) -> dict:
    params = {k: v for k, v in request.query_params.items() if k not in _PAGING_PARAMS}
    data = EventFilterSerializer(data=params)
    data.is_valid(raise_exception=True)
    filters = dict(data.validated_data)
    filters["since"], filters["until"] = queries.check_range(filters.get("since"), filters.get("until"),
                                                             default_span=default_span)
    return filters


@extend_schema(parameters=[EventFilterSerializer], summary="The audit trail of your organization (admins)")
class AuditEventListView(Scoped, ListAPIView):
    required_permission = ADMIN
    serializer_class = AuditEventSerializer
    pagination_class = EventCursor
    queryset = AuditEvent.objects.all()

    def get_queryset(self):
        return queries.filter_events(super().get_queryset(), **_filters(self.request))


class AuditExportView(ScopedAPIView):
    """Events as JSON lines, oldest first; without since/until, the last 31 days. Itself recorded."""

    required_permission = "export_data"
    scoped_model = AuditEvent

    @extend_schema(parameters=[EventFilterSerializer], summary="Export the audit trail as JSON lines",
                   responses={(200, "application/x-ndjson"): OpenApiResponse(description="One event per line.")})
    def get(self, request):
        filters = _filters(request, default_span=queries.DEFAULT_EXPORT_RANGE)
        events = queries.filter_events(self.scoped(AuditEvent.objects.all()), **filters).order_by("sequence")
        record(actions.DATA_EXPORTED, request=request, resource="audit_events",
               metadata={"format": "jsonl", **{k: v for k, v in filters.items() if v is not None}})
        response = RowsStreamingResponse(iter_jsonl(events.iterator(chunk_size=1000)),
                                         content_type="application/x-ndjson")
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.jsonl"'
        return response

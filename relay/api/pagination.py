"""The API's page bounds: `limit` and `offset` are clamped, so no query asks the database for more rows
than it can count (an unbounded `limit=10**24` overflowed SQLite's integers and answered 500)."""

from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 10**9  # beyond any real table: an empty page, never a database error


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    max_limit = 500

    def get_offset(self, request):
        return min(super().get_offset(request), MAX_OFFSET)

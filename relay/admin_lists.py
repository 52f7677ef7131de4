"""Admin list pages that stay fast on tables of 100,000+ rows (bench/admin_lists.py measures them).

Django's defaults cost a scan of the whole table each: `date_hierarchy` (SELECT DISTINCT of
truncated dates, MIN/MAX under a search), a list filter on a plain field (SELECT DISTINCT of
the column) and the paginator's exact COUNT(*). These replacements read no rows to draw the page.
"""

from django.contrib import admin
from django.core.paginator import Paginator
from django.utils.functional import cached_property

COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP + 1 rows (100 pages of 100): past that, narrow with a filter."""

    @cached_property
    def count(self):
        return self.object_list[: COUNT_CAP + 1].count()


def choices_filter(field: str, title: str, choices):
    """A list filter over a fixed set of values (no SELECT DISTINCT over the table)."""

    values = [(value, value) for value in choices] if not callable(choices) else None

    class ChoicesFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request, model_admin):
            return values if values is not None else [(v, v) for v in choices()]

        def queryset(self, request, queryset):
            return queryset.filter(**{field: self.value()}) if self.value() else queryset

    ChoicesFilter.title = title
    return ChoicesFilter

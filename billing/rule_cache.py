"""Prices and budgets as every model call reads them: kept per process, dropped everywhere on change.

billing/apps.py connects `RULES.bump` to the saves and deletes of the rows the copies come from.
"""

from relay.versioned_cache import VersionedCache

RULES = VersionedCache("billing-rules")

"""`flush` empties every table, so it must get past the audit tables' DELETE/TRUNCATE triggers.

It is the one sanctioned way to empty the trail besides pruning (development databases and
test teardown); the chain then starts again at #1.
"""

from django.core.management.commands import flush
from django.db import DEFAULT_DB_ALIAS, connections

from audit import head_checkpoints, triggers


class Command(flush.Command):
    def handle(self, **options):
        connection = connections[options.get("database") or DEFAULT_DB_ALIAS]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"SET {triggers.PRUNE_SETTING} = 'on'")
                cursor.execute(f"SET {triggers.DRAIN_SETTING} = 'on'")
            elif connection.vendor == "sqlite":
                cursor.execute(triggers.SQLITE_DROP_DELETE_TRIGGER)
        try:
            result = super().handle(**options)
            head_checkpoints.forget(connection.alias)  # the checkpoint it remembers is gone with the rest
            return result
        finally:
            with connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    cursor.execute(f"RESET {triggers.PRUNE_SETTING}")
                    cursor.execute(f"RESET {triggers.DRAIN_SETTING}")
                elif connection.vendor == "sqlite" and _table_exists(connection):
                    cursor.execute(triggers.SQLITE_DELETE_TRIGGER)


def _table_exists(connection) -> bool:
    return triggers.TABLE in connection.introspection.table_names()

from contextlib import contextmanager

from django.db import connection

from audit import triggers


@contextmanager
def triggers_lifted():
    """What an attacker with database access does first: switch the append-only guard off."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # ALTER TABLE is refused while deferred FK checks of this transaction are pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE {triggers.TABLE} DISABLE TRIGGER ALL")
        else:
            for statement in triggers.SQLITE_UNINSTALL:
                cursor.execute(statement)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"ALTER TABLE {triggers.TABLE} ENABLE TRIGGER ALL")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            else:
                for statement in triggers.SQLITE_INSTALL:
                    cursor.execute(statement)


def raw(sql: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)

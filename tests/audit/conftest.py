import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.db import connection

from audit import triggers

# DEBUG=0 refuses the development key; what this process signs checkpoints with must be what the
# other process verifies them with.
SUBPROCESS_SECRET_KEY = os.environ.get("SECRET_KEY") or "audit-subprocess-" + "k" * 50


@contextmanager
def triggers_lifted():
    """What an attacker with database access does first: switch the append-only guard off."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # ALTER TABLE is refused while deferred FK checks of this transaction are pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in (triggers.TABLE, *triggers.CHECKPOINT_TABLES):
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
        else:
            for statement in triggers.SQLITE_UNINSTALL:
                cursor.execute(statement)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for table in (triggers.TABLE, *triggers.CHECKPOINT_TABLES):
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER ALL")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            else:
                for statement in triggers.SQLITE_INSTALL:
                    cursor.execute(statement)


def raw(sql: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def database_url() -> str:
    db = django_settings.DATABASES["default"]
    if connection.vendor == "postgresql":
        return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


@pytest.fixture
def manage_py(transactional_db, settings):
    """manage_py("verify_audit", ...) runs manage.py in another process against this test's database.

    The test's writes are committed (transactional_db), so the other process sees exactly what
    an operator's shell would.
    """
    settings.SECRET_KEY = SUBPROCESS_SECRET_KEY
    env = {**os.environ, "DATABASE_URL": database_url(), "DEBUG": "0", "RELAY_BEHIND_TLS": "0",
           "SECRET_KEY": SUBPROCESS_SECRET_KEY}

    def run(*args: str, **env_overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR,
                              env={**env, **env_overrides}, capture_output=True, text=True, timeout=180,
                              check=False)

    return run

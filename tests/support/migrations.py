"""Migrating the test database to a given state and back (the migration tests)."""

from __future__ import annotations

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(targets):
    """Apply or unapply to `targets`; the apps (historical models) of that state."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


def head():
    """The newest migration of every app: where the other tests need the database."""
    return MigrationExecutor(connection).loader.graph.leaf_nodes()

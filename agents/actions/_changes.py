"""What an edit changed, for the `changes` metadata of an *.updated event."""

from django.db.models import Model


def snapshot(instance: Model, fields) -> dict:
    return {name: getattr(instance, name) for name in fields}


def changes(before: dict, instance: Model) -> dict:
    """{field: [old, new]} for the fields of `before` whose value differs now."""
    return {name: [old, getattr(instance, name)] for name, old in before.items() if getattr(instance, name) != old}

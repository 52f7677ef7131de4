from django.db import migrations, models

from audit import triggers


class Migration(migrations.Migration):
    """The hash format version (rows already written are format 1), indexes for reading the trail by
    the hashed references, and the append-only guard reinstalled to cover `version`."""

    dependencies = [("audit", "0002_append_only_triggers")]

    operations = [
        # Backwards, after RemoveField: SQLite may remake the table for it, which drops its triggers.
        migrations.RunPython(migrations.RunPython.noop, triggers.install_0002, elidable=False),
        migrations.AddField(
            model_name="auditevent",
            name="version",
            field=models.PositiveSmallIntegerField(db_default=1, default=2, editable=False),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["organization_ref", "-sequence"], name="audit_event_org_ref_seq"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["actor_ref", "-sequence"], name="audit_event_actor_ref_seq"),
        ),
        # Forwards, last: SQLite remade the table for AddField, which dropped its triggers. Backwards,
        # first: SQLite cannot drop a column a trigger names.
        migrations.RunPython(triggers.install, triggers.install_0002, elidable=False),
    ]

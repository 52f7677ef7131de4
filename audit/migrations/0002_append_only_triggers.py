from django.db import migrations

from audit import triggers


class Migration(migrations.Migration):
    """Refuse UPDATE/DELETE/TRUNCATE on the audit table in the database itself (see audit.triggers)."""

    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(triggers.install_0002, triggers.uninstall, elidable=False)]

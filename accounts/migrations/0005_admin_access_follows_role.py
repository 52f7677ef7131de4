"""An organization's admins get the admin console, its other members lose it (accounts.actions keep it so)."""

from django.db import migrations


def follow_roles(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    members = User.objects.filter(organization__isnull=False, is_superuser=False)
    members.filter(groups__name="admin").update(is_staff=True)
    members.exclude(groups__name="admin").update(is_staff=False)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_apikey_parent")]

    operations = [migrations.RunPython(follow_roles, migrations.RunPython.noop)]

"""Create the four roles of docs/design.md section 4 as groups with their permissions.

The matrix is copied from accounts.roles on purpose: a migration must keep doing what it did
when it was written, whatever the code later says (a test checks the two agree today).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLE_PERMISSIONS = {
    "admin": [
        "use_math_agent", "use_code_agent", "use_rag_agent", "use_vision_agent", "view_metrics", "manage_users",
        "export_data", "manage_training", "upload_documents", "delete_documents",
    ],
    "user": ["use_math_agent", "use_code_agent", "use_rag_agent", "use_vision_agent", "upload_documents"],
    "viewer": ["use_rag_agent", "view_metrics"],
    "api_user": ["use_math_agent", "use_code_agent", "use_rag_agent"],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations; the roles need them now.
    config = apps.get_app_config("accounts")
    config.models_module = True
    create_permissions(config, apps=apps, verbosity=0)
    config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(Permission.objects.filter(content_type__app_label="accounts", codename__in=codenames))


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLE_PERMISSIONS).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length"),
                    ("contenttypes", "0002_remove_content_type_name")]
    operations = [migrations.RunPython(create_roles, remove_roles)]

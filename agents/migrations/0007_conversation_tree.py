"""Pinned conversations and the message tree (regenerated answers, edited questions as sibling versions).

Existing conversations become one branch: each message follows the one before it.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0006_model_deployments'),
    ]

    operations = [
        migrations.AddField(
            model_name='conversation',
            name='pinned',
            field=models.BooleanField(default=False, help_text="Listed first in its owner's sidebar."),
        ),
        migrations.AddField(
            model_name='message',
            name='parent',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='children', to='agents.message'),
        ),
        migrations.RunSQL(
            """
            UPDATE agents_message AS m SET parent_id = p.previous
            FROM (SELECT id, LAG(id) OVER (PARTITION BY conversation_id ORDER BY created_at, id) AS previous
                  FROM agents_message) AS p
            WHERE m.id = p.id AND p.previous IS NOT NULL
            """,
            reverse_sql=migrations.RunSQL.noop,  # the column goes with the reversed AddField
        ),
    ]

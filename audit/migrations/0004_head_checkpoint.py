from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0003_format_version_and_recorded_scope'),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditHeadCheckpoint',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('sequence', models.BigIntegerField()),
                ('hash', models.CharField(max_length=64)),
                ('created_at', models.DateTimeField()),
                ('signature', models.CharField(max_length=64)),
            ],
            options={
                'ordering': ['-sequence', '-created_at'],
                'indexes': [models.Index(fields=['-sequence', '-created_at'], name='audit_head_latest')],
            },
        ),
    ]

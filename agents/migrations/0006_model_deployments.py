"""Models served by deployments (issue 18): each endpoint's upstream becomes its one deployment.

An endpoint with a base_url becomes a one-deployment model whose deployment, "primary", has the
same base_url, upstream_model and api_key_env; prices, budgets and /v1/models are keyed by the
model's name, which does not change. Backwards, each model keeps the upstream of its "primary"
deployment (or of its first one) and the others are dropped.
"""

import agents.models
import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


def one_deployment_per_endpoint(apps, schema_editor):
    endpoints = apps.get_model("agents", "ModelEndpoint")
    deployments = apps.get_model("agents", "ModelDeployment")
    deployments.objects.bulk_create(
        deployments(endpoint=endpoint, name="primary", base_url=endpoint.base_url,
                    upstream_model=endpoint.upstream_model, api_key_env=endpoint.api_key_env)
        for endpoint in endpoints.objects.exclude(base_url="").order_by("pk"))
    _check_now(schema_editor)


def back_to_one_upstream_per_endpoint(apps, schema_editor):
    endpoints = apps.get_model("agents", "ModelEndpoint")
    deployments = apps.get_model("agents", "ModelDeployment")
    for endpoint in endpoints.objects.order_by("pk"):
        rows = deployments.objects.filter(endpoint=endpoint)
        primary = rows.filter(name="primary").first() or rows.order_by("priority", "name").first()
        if primary is not None:
            endpoint.base_url, endpoint.upstream_model = primary.base_url, primary.upstream_model
            endpoint.api_key_env = primary.api_key_env
            endpoint.save(update_fields=["base_url", "upstream_model", "api_key_env"])
    _check_now(schema_editor)


def _check_now(schema_editor):
    """PostgreSQL refuses to ALTER a table with deferred foreign-key checks pending in the same
    transaction (the fields removed or added next): run those checks now."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0005_idempotency_key'),
    ]

    operations = [
        migrations.AddField(
            model_name='modelendpoint',
            name='allowed_fails',
            field=models.PositiveSmallIntegerField(default=3, help_text='Failures of a deployment within the window that put it in cooldown.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(1000)]),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='context_window_fallback',
            field=models.CharField(blank=True, help_text='The model used when the upstream says the context is too long.', max_length=100),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='cooldown_seconds',
            field=models.PositiveIntegerField(default=30, help_text='How long a failing deployment rests (an upstream Retry-After overrides it).', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(86400)]),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='failure_window_seconds',
            field=models.PositiveIntegerField(default=60, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(86400)]),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='fallbacks',
            field=models.JSONField(blank=True, default=list, help_text='Model names tried in order when every deployment failed (at most 5).'),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='first_token_timeout_seconds',
            field=models.FloatField(default=60, help_text='An attempt with no first event by then fails as a timeout.', validators=[django.core.validators.MinValueValidator(0.1), django.core.validators.MaxValueValidator(3600)]),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='num_retries',
            field=models.PositiveSmallIntegerField(default=2, help_text='Further attempts on other deployments of this model before its fallbacks.', validators=[django.core.validators.MaxValueValidator(10)]),
        ),
        migrations.AddField(
            model_name='modelendpoint',
            name='routing_strategy',
            field=models.CharField(choices=[('least_busy', 'Least busy (fewest requests in flight)'), ('lowest_latency', 'Lowest latency (time to first token)'), ('weighted_random', 'Weighted random'), ('priority', 'Priority order (lowest number first)')], default='least_busy', max_length=16),
        ),
        migrations.CreateModel(
            name='ModelDeployment',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.SlugField(help_text='A label within its model (metrics, audit trail).', max_length=64)),
                ('base_url', models.CharField(help_text='e.g. http://vllm:8000/v1', max_length=200, validators=[agents.models.validate_upstream_url])),
                ('upstream_model', models.CharField(blank=True, help_text="The model id upstream; defaults to the model's name.", max_length=200)),
                ('api_key_env', models.CharField(blank=True, help_text='Name of the environment variable holding the upstream API key (never stored here).', max_length=100, validators=[django.core.validators.RegexValidator('^[A-Za-z_][A-Za-z0-9_]*\\Z', 'A name of an environment variable: letters, digits, _.')])),
                ('weight', models.PositiveIntegerField(default=1, help_text='Share of the requests under weighted random.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(10000)])),
                ('priority', models.PositiveSmallIntegerField(default=0, help_text='Lower is tried first under priority order.', validators=[django.core.validators.MaxValueValidator(1000)])),
                ('rpm_limit', models.PositiveIntegerField(blank=True, help_text='Requests per minute, cluster-wide; empty: no limit.', null=True, validators=[django.core.validators.MinValueValidator(1)])),
                ('tpm_limit', models.PositiveIntegerField(blank=True, help_text='Tokens per minute, cluster-wide; empty: no limit.', null=True, validators=[django.core.validators.MinValueValidator(1)])),
                ('enabled', models.BooleanField(default=True)),
                ('endpoint', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='deployments', to='agents.modelendpoint')),
            ],
            options={
                'ordering': ['endpoint', 'priority', 'name'],
                'constraints': [models.UniqueConstraint(fields=('endpoint', 'name'), name='deployment_unique_name')],
            },
        ),
        migrations.RunPython(one_deployment_per_endpoint, back_to_one_upstream_per_endpoint),
        migrations.RemoveField(
            model_name='modelendpoint',
            name='api_key_env',
        ),
        migrations.RemoveField(
            model_name='modelendpoint',
            name='base_url',
        ),
        migrations.RemoveField(
            model_name='modelendpoint',
            name='upstream_model',
        ),
    ]

"""The pool's references to organisations and API keys now point at the access app's models (state only)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('access', '0001_moved_in'),
        ('inference', '0003_replica_stopping_until'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.AlterField(
                model_name='deployment',
                name='organisation',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='deployments', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='gatewaylimit',
                name='organisation',
                field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='gateway_limit', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='gpuquota',
                name='organisation',
                field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='gpu_quota', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='tokenusage',
                name='api_key',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='token_usage', to='access.apikey'),
            ),
            migrations.AlterField(
                model_name='tokenusage',
                name='organisation',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='token_usage', to='access.organisation'),
            ),
        ], database_operations=[]),
    ]

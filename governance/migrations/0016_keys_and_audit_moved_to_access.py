"""API keys and the audit log moved to the access app; references to groups and organisations follow
(state only: no table changes)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('access', '0001_moved_in'),
        ('governance', '0015_alert_acknowledgement_note'),
        ('inference', '0004_tenants_moved_to_access'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.RemoveField(
                model_name='auditevent',
                name='group',
            ),
            migrations.RemoveField(
                model_name='auditevent',
                name='organisation',
            ),
            migrations.AlterField(
                model_name='accessdecision',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='access_decisions', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='alert',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='alerts', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='alertlevelstate',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='compliancestatus',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='statuses', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='coverageattestation',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='attestations', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='declarationproposal',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='declaration_proposals', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='declarationproposal',
                name='organisation',
                field=models.ForeignKey(help_text='The proposing organisation', on_delete=django.db.models.deletion.PROTECT, related_name='+', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='declaredfigure',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='declared_figures', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='groupforecast',
                name='group',
                field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='forecast', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='grouppolicy',
                name='group',
                field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='policy', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='idempotencyrecord',
                name='organisation',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='statuschange',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='status_changes', to='access.affiliategroup'),
            ),
            migrations.AlterField(
                model_name='webhookendpoint',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='webhook_endpoints', to='access.affiliategroup'),
            ),
            migrations.DeleteModel(
                name='ApiKey',
            ),
            migrations.DeleteModel(
                name='AuditEvent',
            ),
        ], database_operations=[]),
    ]

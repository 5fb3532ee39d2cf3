from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0012_verdict_fidelity'),
    ]

    operations = [
        migrations.AlterField(
            model_name='compliancestatus',
            name='state',
            field=models.CharField(choices=[('below', 'Below'), ('approaching', 'Approaching'), ('uncertain', 'Uncertain'), ('over', 'Over'), ('granted', 'Granted'), ('unknown', 'Unknown'), ('exempt', 'Exempt (clause 1.b.ii)')], max_length=12),
        ),
        migrations.AlterField(
            model_name='statuschange',
            name='state',
            field=models.CharField(choices=[('below', 'Below'), ('approaching', 'Approaching'), ('uncertain', 'Uncertain'), ('over', 'Over'), ('granted', 'Granted'), ('unknown', 'Unknown'), ('exempt', 'Exempt (clause 1.b.ii)')], max_length=12),
        ),
    ]

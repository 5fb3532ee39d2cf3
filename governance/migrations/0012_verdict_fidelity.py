import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0011_declaration_proposals'),
        ('licensing', '0005_base_model_release_date'),
    ]

    operations = [
        migrations.AddField(
            model_name='compliancestatus',
            name='basis',
            field=models.CharField(blank=True, help_text='The counting basis of the figure used', max_length=20),
        ),
        migrations.AddField(
            model_name='compliancestatus',
            name='considered',
            field=models.JSONField(default=list, help_text='Every figure of the month, with the state each gives'),
        ),
        migrations.AddField(
            model_name='compliancestatus',
            name='coverage',
            field=models.JSONField(default=dict, help_text='Products metered, not metered, attestation'),
        ),
        migrations.AddField(
            model_name='declaredfigure',
            name='lower',
            field=models.BigIntegerField(blank=True, help_text='Lower bound of the figure; none: a point', null=True),
        ),
        migrations.AddField(
            model_name='declaredfigure',
            name='upper',
            field=models.BigIntegerField(blank=True, help_text='Upper bound of the figure; none: a point', null=True),
        ),
        migrations.AddField(
            model_name='grouppolicy',
            name='counting_basis',
            field=models.CharField(choices=[('distinct_people', 'Distinct people across all products and affiliates'), ('sum_of_products', "Each product's MAU added up (most conservative)")], default='distinct_people', help_text='How the metered figure counts a person who uses two products (the licence does not say)', max_length=20),
        ),
        migrations.AddField(
            model_name='grouppolicy',
            name='on_unknown',
            field=models.CharField(choices=[('allow', 'Allow, and alert so someone declares the month'), ('block', 'Block until the month has a figure')], default='allow', help_text='Whether a version whose tested month has no figure is blocked', max_length=10),
        ),
        migrations.CreateModel(
            name='CoverageAttestation',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField(help_text='First day of the month')),
                ('statement', models.TextField(help_text='What was checked, by whom, against which list')),
                ('products', models.JSONField(default=list, help_text='The registered products and services attested, by name')),
                ('attested_by', models.CharField(max_length=200)),
                ('attested_at', models.DateTimeField(auto_now_add=True)),
                ('group', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='attestations', to='licensing.affiliategroup')),
            ],
            options={
                'ordering': ['-attested_at', '-id'],
            },
        ),
    ]

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0010_sketch_quarantine'),
        ('licensing', '0004_group_authority'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeclarationProposal',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField(help_text='First day of the month')),
                ('mau', models.BigIntegerField()),
                ('evidence', models.TextField()),
                ('proposed_by', models.CharField(max_length=200)),
                ('proposed_at', models.DateTimeField(auto_now_add=True)),
                ('status', models.CharField(choices=[('proposed', 'Proposed'), ('confirmed', 'Confirmed'), ('rejected', 'Rejected')], default='proposed', max_length=10)),
                ('decided_by', models.CharField(blank=True, max_length=200)),
                ('decided_at', models.DateTimeField(blank=True, null=True)),
                ('decision_note', models.TextField(blank=True)),
                ('declared_figure', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='proposal', to='governance.declaredfigure')),
                ('group', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='declaration_proposals', to='licensing.affiliategroup')),
                ('organisation', models.ForeignKey(help_text='The proposing organisation', on_delete=django.db.models.deletion.PROTECT, related_name='+', to='licensing.organisation')),
            ],
            options={
                'ordering': ['-proposed_at', '-id'],
            },
        ),
    ]

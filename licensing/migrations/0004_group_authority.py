
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def managed_by_first_organisation(apps, schema_editor):
    """Every existing group is managed by its first organisation, as a new group will be."""
    AffiliateGroup = apps.get_model("licensing", "AffiliateGroup")
    Organisation = apps.get_model("licensing", "Organisation")
    for group in AffiliateGroup.objects.filter(managing_organisation__isnull=True):
        first = Organisation.objects.filter(group=group).order_by("pk").first()
        if first is not None:
            group.managing_organisation = first
            group.save(update_fields=["managing_organisation"])


class Migration(migrations.Migration):

    dependencies = [
        ('licensing', '0003_invitation'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='affiliategroup',
            name='managing_organisation',
            field=models.ForeignKey(blank=True, help_text="Its admins are the group's admins; the group's first organisation unless transferred", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='licensing.organisation'),
        ),
        migrations.CreateModel(
            name='GroupAdmin',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('appointed_by', models.CharField(max_length=200)),
                ('appointed_at', models.DateTimeField(auto_now_add=True)),
                ('group', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='admins', to='licensing.affiliategroup')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='group_admin_roles', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['appointed_at', 'id'],
                'constraints': [models.UniqueConstraint(fields=('group', 'user'), name='one_group_admin_role_per_user')],
            },
        ),
        migrations.RunPython(managed_by_first_organisation, migrations.RunPython.noop),
    ]

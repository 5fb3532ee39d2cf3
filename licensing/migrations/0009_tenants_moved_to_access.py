"""Affiliate groups, organisations, memberships, group admins and invitations moved to the access app
(state only), and their content types with them, so admin history and permissions keep pointing at them."""

import django.db.models.deletion
from django.db import migrations, models

MOVED = {"licensing": ["affiliategroup", "organisation", "membership", "groupadmin", "invitation"],
         "governance": ["apikey", "auditevent"]}


def content_types_follow(apps, schema_editor):
    """Relabel the moved models' content types (where access has none yet: a fresh database has neither)."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    for old_label, models_ in MOVED.items():
        for model in models_:
            if not ContentType.objects.filter(app_label="access", model=model).exists():
                ContentType.objects.filter(app_label=old_label, model=model).update(app_label="access")


def content_types_return(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for old_label, models_ in MOVED.items():
        ContentType.objects.filter(app_label="access", model__in=models_).update(app_label=old_label)


class Migration(migrations.Migration):

    dependencies = [
        ('access', '0001_moved_in'),
        ('governance', '0016_keys_and_audit_moved_to_access'),
        ('inference', '0004_tenants_moved_to_access'),
        ('licensing', '0008_product_optional_licence_exemption'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.RemoveField(
                model_name='groupadmin',
                name='group',
            ),
            migrations.AlterField(
                model_name='metagrant',
                name='group',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='grants', to='access.affiliategroup'),
            ),
            migrations.RemoveField(
                model_name='organisation',
                name='group',
            ),
            migrations.RemoveField(
                model_name='groupadmin',
                name='user',
            ),
            migrations.RemoveField(
                model_name='invitation',
                name='accepted_by',
            ),
            migrations.RemoveField(
                model_name='invitation',
                name='organisation',
            ),
            migrations.RemoveField(
                model_name='membership',
                name='organisation',
            ),
            migrations.RemoveField(
                model_name='membership',
                name='user',
            ),
            migrations.AlterField(
                model_name='product',
                name='organisation',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='products', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='exemption',
                name='organisation',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='exemptions', to='access.organisation'),
            ),
            migrations.AlterField(
                model_name='licenceacceptance',
                name='organisation',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='acceptances', to='access.organisation'),
            ),
            migrations.DeleteModel(
                name='AffiliateGroup',
            ),
            migrations.DeleteModel(
                name='GroupAdmin',
            ),
            migrations.DeleteModel(
                name='Invitation',
            ),
            migrations.DeleteModel(
                name='Membership',
            ),
            migrations.DeleteModel(
                name='Organisation',
            ),
        ], database_operations=[]),
        migrations.RunPython(content_types_follow, content_types_return),
    ]

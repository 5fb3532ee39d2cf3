"""The tenants (from licensing), API keys and the audit log (from governance) move to the access app.

State only: the tables stay as they are (each model's ``db_table`` keeps its old name)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('licensing', '0008_product_optional_licence_exemption'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name='AffiliateGroup',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=200, unique=True)),
                    ('slug', models.SlugField(max_length=200, unique=True)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                ],
                options={
                    'db_table': 'licensing_affiliategroup',
                    'ordering': ['name'],
                },
            ),
            migrations.CreateModel(
                name='Organisation',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=200, unique=True)),
                    ('slug', models.SlugField(max_length=200, unique=True)),
                    ('status', models.CharField(choices=[('active', 'Active'), ('suspended', 'Suspended')], default='active', max_length=20)),
                    ('eu_domiciled', models.BooleanField(default=False, help_text='Principal place of business in the European Union (Llama 3.2+ multimodal AUP)')),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('group', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='organisations', to='access.affiliategroup')),
                ],
                options={
                    'db_table': 'licensing_organisation',
                    'ordering': ['name'],
                },
            ),
            migrations.CreateModel(
                name='AuditEvent',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('seq', models.PositiveBigIntegerField(unique=True)),
                    ('at', models.DateTimeField()),
                    ('actor', models.CharField(max_length=200)),
                    ('action', models.CharField(db_index=True, max_length=80)),
                    ('object_type', models.CharField(blank=True, max_length=80)),
                    ('object_id', models.CharField(blank=True, max_length=80)),
                    ('data', models.JSONField(default=dict)),
                    ('prev_hash', models.CharField(max_length=64)),
                    ('hash', models.CharField(max_length=64, unique=True)),
                    ('group', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='audit_events', to='access.affiliategroup')),
                    ('organisation', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='audit_events', to='access.organisation')),
                ],
                options={
                    'db_table': 'governance_auditevent',
                    'ordering': ['seq'],
                },
            ),
            migrations.CreateModel(
                name='ApiKey',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=200)),
                    ('prefix', models.CharField(help_text='Visible, non-secret start of the key', max_length=16, unique=True)),
                    ('key_hash', models.CharField(max_length=64)),
                    ('scopes', models.JSONField(default=list)),
                    ('expires_at', models.DateTimeField(blank=True, null=True)),
                    ('revoked_at', models.DateTimeField(blank=True, null=True)),
                    ('revoked_by', models.CharField(blank=True, max_length=200)),
                    ('deleted_at', models.DateTimeField(blank=True, help_text='Deleted through the API: revoked and no longer served by it; the row stays for the audit trail', null=True)),
                    ('last_used_at', models.DateTimeField(blank=True, null=True)),
                    ('created_by', models.CharField(max_length=200)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('requests_per_minute', models.PositiveIntegerField(blank=True, null=True)),
                    ('tokens_per_minute', models.PositiveIntegerField(blank=True, null=True)),
                    ('max_concurrent', models.PositiveIntegerField(blank=True, null=True)),
                    ('default_user', models.CharField(blank=True, help_text='Gateway: the user metered for MAU when a request names none (no `user`, no X-Corral-User)', max_length=200)),
                    ('product', models.ForeignKey(blank=True, help_text='When set, the key acts only on this product', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='api_keys', to='licensing.product')),
                    ('organisation', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_keys', to='access.organisation')),
                ],
                options={
                    'db_table': 'governance_apikey',
                    'ordering': ['-created_at', '-id'],
                },
            ),
            migrations.AddField(
                model_name='affiliategroup',
                name='managing_organisation',
                field=models.ForeignKey(blank=True, help_text="Its admins are the group's admins; the group's first organisation unless transferred", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='access.organisation'),
            ),
            migrations.CreateModel(
                name='GroupAdmin',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('appointed_by', models.CharField(max_length=200)),
                    ('appointed_at', models.DateTimeField(auto_now_add=True)),
                    ('group', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='admins', to='access.affiliategroup')),
                    ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='group_admin_roles', to=settings.AUTH_USER_MODEL)),
                ],
                options={
                    'db_table': 'licensing_groupadmin',
                    'ordering': ['appointed_at', 'id'],
                    'constraints': [models.UniqueConstraint(fields=('group', 'user'), name='one_group_admin_role_per_user')],
                },
            ),
            migrations.CreateModel(
                name='Membership',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('role', models.CharField(choices=[('owner', 'Owner'), ('admin', 'Admin'), ('member', 'Member'), ('viewer', 'Viewer')], default='member', max_length=20)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to=settings.AUTH_USER_MODEL)),
                    ('organisation', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to='access.organisation')),
                ],
                options={
                    'db_table': 'licensing_membership',
                    'constraints': [models.UniqueConstraint(fields=('user', 'organisation'), name='one_membership_per_org')],
                },
            ),
            migrations.CreateModel(
                name='Invitation',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('email', models.EmailField(help_text='Where the link was sent; the person accepting may use another account', max_length=254)),
                    ('role', models.CharField(choices=[('owner', 'Owner'), ('admin', 'Admin'), ('member', 'Member'), ('viewer', 'Viewer')], max_length=20)),
                    ('selector', models.CharField(help_text='Non-secret start of the token', max_length=16, unique=True)),
                    ('token_hash', models.CharField(help_text='SHA-256 of the token', max_length=64)),
                    ('created_by', models.CharField(max_length=200)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('expires_at', models.DateTimeField()),
                    ('accepted_at', models.DateTimeField(blank=True, null=True)),
                    ('revoked_at', models.DateTimeField(blank=True, null=True)),
                    ('revoked_by', models.CharField(blank=True, max_length=200)),
                    ('accepted_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ('organisation', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='invitations', to='access.organisation')),
                ],
                options={
                    'db_table': 'licensing_invitation',
                    'ordering': ['-created_at', '-id'],
                    'constraints': [models.CheckConstraint(condition=models.Q(('accepted_at__isnull', True), ('revoked_at__isnull', True), _connector='OR'), name='invitation_accepted_or_revoked_not_both')],
                },
            ),
        ], database_operations=[]),
    ]

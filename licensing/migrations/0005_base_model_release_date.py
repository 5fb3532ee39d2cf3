from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('licensing', '0004_group_authority'),
    ]

    operations = [
        migrations.AddField(
            model_name='basemodel',
            name='date_note',
            field=models.TextField(blank=True, help_text='Where the date comes from, and why it matters'),
        ),
        migrations.AddField(
            model_name='basemodel',
            name='release_date',
            field=models.DateField(blank=True, help_text="This model's own release date, where it differs from its licence version's (Code Llama 70B)", null=True),
        ),
    ]

"""The catalogue gains the naming rule's reach: from Llama 3.1 on it covers a model made with the outputs."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("licensing", "0005_base_model_release_date"),
    ]

    operations = [
        migrations.AddField(
            model_name="licenceversion",
            name="derived_name_covers_outputs",
            field=models.BooleanField(
                default=False,
                help_text="The naming rule also covers a model made with the materials' outputs or results "
                          "(3.1 and later)"),
        ),
    ]

"""Load the licence catalogue (licensing/data/catalogue.json). Rows an admin edited are never overwritten."""

from django.db import migrations

from licensing.catalogue import catalogue_load


def load(apps, schema_editor):  # type: ignore[no-untyped-def]
    catalogue_load(apps.get_model("licensing", "LicenceVersion"), apps.get_model("licensing", "BaseModel"))


class Migration(migrations.Migration):
    dependencies = [("licensing", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]

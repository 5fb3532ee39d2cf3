"""Store sketches uncompressed in PostgreSQL.

Sketch bytes are hash registers: PostgreSQL's TOAST compression (pglz) spends CPU on every insert and update
trying to compress them and gains nothing. STORAGE EXTERNAL keeps them out of line, uncompressed.
"""

from django.db import migrations


def external_storage(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in ("governance_activitypart", "governance_rollup"):
        schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN sketch SET STORAGE EXTERNAL")


def default_storage(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in ("governance_activitypart", "governance_rollup"):
        schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN sketch SET STORAGE EXTENDED")


class Migration(migrations.Migration):
    dependencies = [("governance", "0002_metering")]
    operations = [migrations.RunPython(external_storage, default_storage)]

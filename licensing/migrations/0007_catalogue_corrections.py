"""Apply the shipped catalogue to a database that already has one: the corrections and additions made since it
was loaded (the naming rule's reach, base models' own dates and licence notes, the base models added) reach it
with the next ``migrate``, each in the audit log. ``manage.py load_catalogue`` does the same on demand.

A database whose audit log is still empty has recorded nothing the catalogue could have informed: there the
catalogue is simply set to the shipped file, with no entries. (On a new database 0002 loaded the file before the
columns added since existed, so this fills them; entries for that would describe no change anyone relied on.)
"""

from django.db import migrations

from access.audit import audit_record
from licensing.catalogue import catalogue_load


def apply_catalogue(apps, schema_editor):  # type: ignore[no-untyped-def]
    # The chain is written through access.audit, the one writer of the hash chain; a second copy of its
    # linking rules here could drift from it. It writes the current AuditEvent, so this migration depends on the
    # latest governance migration that shapes it.
    try:
        audit_events = apps.get_model("governance", "AuditEvent")
    except LookupError:  # the live registry (tests call this with it), where the model is access's since 0009
        audit_events = apps.get_model("access", "AuditEvent")
    has_history = audit_events.objects.exists()
    catalogue_load(
        apps.get_model("licensing", "LicenceVersion"),
        apps.get_model("licensing", "BaseModel"),
        audit=audit_record if has_history else None,
    )


class Migration(migrations.Migration):

    dependencies = [
        ("licensing", "0006_aup_sha256_and_catalogue_fields"),
        ("governance", "0011_declaration_proposals"),
    ]

    operations = [migrations.RunPython(apply_catalogue, migrations.RunPython.noop)]

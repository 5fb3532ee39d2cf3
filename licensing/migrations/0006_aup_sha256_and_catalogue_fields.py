"""An acceptance records the SHA-256 of the Acceptable Use Policy text accepted, as it does the licence's; the
catalogue gains the naming rule's reach (outputs, from Llama 3.1 on) and a base model's licence note.

Existing acceptances recorded only the AUP's version name. Their hash is filled from the catalogue row's current
``aup_sha256``, and only where the recorded ``aup_version`` is that row's ``aup_version``: the reading is that
the text the catalogue pins for that version name now is the text accepted under it. That holds while the
catalogue has not changed the text since: this migration runs before 0007 applies any correction, so an AUP text
that 0007 changes asks for a new acceptance. An acceptance whose ``aup_version`` differs keeps a blank hash and
does not count as acceptance of the current AUP, as it did not before. Only the new column is written: what each
acceptance recorded is unchanged (acceptances stay append-only).
"""

from django.db import migrations, models


def fill_aup_sha256(apps, schema_editor):  # type: ignore[no-untyped-def]
    LicenceVersion = apps.get_model("licensing", "LicenceVersion")
    LicenceAcceptance = apps.get_model("licensing", "LicenceAcceptance")
    for version in LicenceVersion.objects.exclude(aup_sha256=""):
        LicenceAcceptance.objects.filter(
            licence_version=version, aup_version=version.aup_version, aup_sha256=""
        ).update(aup_sha256=version.aup_sha256)


class Migration(migrations.Migration):

    dependencies = [
        ("licensing", "0005_base_model_release_date"),
    ]

    operations = [
        migrations.AddField(
            model_name="basemodel",
            name="licence_note",
            field=models.TextField(
                blank=True, help_text="Why the model is under this licence version, where Meta's own sources differ"),
        ),
        migrations.AddField(
            model_name="licenceacceptance",
            name="aup_sha256",
            field=models.CharField(
                blank=True, max_length=64,
                help_text="SHA-256 of the Acceptable Use Policy text accepted; blank where the catalogue held none"),
        ),
        migrations.AddField(
            model_name="licenceversion",
            name="derived_name_covers_outputs",
            field=models.BooleanField(
                default=False,
                help_text="The naming rule also covers a model made with the materials' outputs or results "
                          "(3.1 and later)"),
        ),
        migrations.RunPython(fill_aup_sha256, migrations.RunPython.noop),
    ]

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from access.audit import audit_record
from licensing.catalogue import catalogue_load
from licensing.models import BaseModel, LicenceVersion


class Command(BaseCommand):
    help = (
        "Apply the shipped licence catalogue: add the versions and base models that are missing and correct those "
        "that differ from it, each change audited. Rows the catalogue does not ship are left alone."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            changes = catalogue_load(LicenceVersion, BaseModel, audit=audit_record)
        for change in changes:
            fields = ", ".join(
                f"{name}: {values['old']!r} -> {values['new']!r}" for name, values in change.fields.items()
            ) if change.action == "updated" else ""
            self.stdout.write(f"{change.action} {change.kind} {change.key}" + (f" ({fields})" if fields else ""))
        created = sum(change.action == "created" for change in changes)
        updated = sum(change.action == "updated" for change in changes)
        self.stdout.write(
            f"Catalogue loaded: {created} created, {updated} updated; "
            f"{LicenceVersion.objects.count()} version(s) and {BaseModel.objects.count()} base model(s) in all."
        )

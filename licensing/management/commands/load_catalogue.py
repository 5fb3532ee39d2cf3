from django.core.management.base import BaseCommand

from licensing.catalogue import catalogue_load
from licensing.models import BaseModel, LicenceVersion


class Command(BaseCommand):
    help = "Add licence versions and base models from the shipped catalogue that are missing (never overwrites)."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        created = catalogue_load(LicenceVersion, BaseModel)
        self.stdout.write(f"Catalogue loaded: {created} new version(s), {LicenceVersion.objects.count()} in all.")

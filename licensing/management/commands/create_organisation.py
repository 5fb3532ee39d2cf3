from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from licensing.services import organisation_create


class Command(BaseCommand):
    help = "Create an organisation (a tenant) in an affiliate group, creating the group if needed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--group", required=True, help="Affiliate group name; created when it does not exist")
        parser.add_argument("--eu", action="store_true", help="Principal place of business in the EU")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            organisation = organisation_create(
                name=options["name"], group_name=options["group"], actor="cli", eu_domiciled=options["eu"]
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        self.stdout.write(
            f"Created organisation {organisation.name!r} (id {organisation.pk}) in group {organisation.group.name!r}"
        )

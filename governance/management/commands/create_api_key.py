import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from access.keys import api_key_create
from access.models import Organisation


class Command(BaseCommand):
    help = "Create an API key for an organisation. The key is printed once, alone on the last line."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("organisation", help="Organisation name, slug or id")
        parser.add_argument("--scopes", required=True, help="Comma-separated: read,write,ingest,inference,admin")
        parser.add_argument("--name", default="cli key")
        parser.add_argument("--product", type=int, help="Bind the key to this product id")
        parser.add_argument("--expires-in-days", type=int, help="Expire the key after this many days")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        ident = options["organisation"]
        lookup = {"pk": int(ident)} if ident.isdigit() else {"slug": ident}
        organisation = Organisation.objects.filter(**lookup).first() or Organisation.objects.filter(name=ident).first()
        if organisation is None:
            raise CommandError(f"No organisation named {ident!r}.")
        product = None
        if options["product"] is not None:
            product = organisation.products.filter(pk=options["product"]).first()
            if product is None:
                raise CommandError(f"Organisation {organisation.name!r} has no product with id {options['product']}.")
        expires_at = None
        if options["expires_in_days"] is not None:
            if options["expires_in_days"] < 1:
                raise CommandError("--expires-in-days must be at least 1.")
            expires_at = timezone.now() + dt.timedelta(days=options["expires_in_days"])
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            api_key, full_key = api_key_create(
                organisation=organisation, name=options["name"], scopes=scopes, created_by="cli",
                product=product, expires_at=expires_at,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Created key {api_key.prefix} for {organisation.name!r} with scopes {','.join(api_key.scopes)}. "
            "Store it now: it is not shown again."
        )
        self.stdout.write(full_key)

import datetime as dt
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from access.models import Membership, Organisation
from governance.metering.services import activity_ingest
from licensing.models import BaseModel, LicenceVersion, Product
from licensing.services import licence_accept, organisation_create, product_create

GROUP = "Acme Holdings"
# (name, licence version (None: not built on Llama), base model, launch date, status)
DEMO: dict[str, list[tuple[str, str | None, str | None, dt.date | None, Product.Status]]] = {
    "Acme Social": [
        ("Acme Chat", "llama-3.1", "meta-llama/Llama-3.1-8B-Instruct", dt.date(2024, 9, 2), Product.Status.LIVE),
        ("Acme Translate", "llama-2", "meta-llama/Llama-2-7b-chat-hf", dt.date(2023, 10, 16), Product.Status.LIVE),
        # Section 2 counts the users of every product or service, not only those built on Llama.
        ("Acme Search", None, None, dt.date(2022, 3, 1), Product.Status.LIVE),
    ],
    "Acme Cloud": [
        ("Acme Vision", "llama-3.2", "meta-llama/Llama-3.2-11B-Vision-Instruct", None, Product.Status.DEVELOPMENT),
        ("Acme Assistant", "llama-3.3", "meta-llama/Llama-3.3-70B-Instruct", dt.date(2025, 2, 3), Product.Status.LIVE),
    ],
}


DEMO_DAYS, DEMO_USERS_A_DAY = 3, 120  # overlapping days: 200 distinct users in all


class Command(BaseCommand):
    help = "Create the demo affiliate group, its organisations and products, and an admin login (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            for org_name, products in DEMO.items():
                organisation = Organisation.objects.filter(name=org_name).first() or organisation_create(
                    name=org_name, group_name=GROUP, actor="demo"
                )
                for name, version_slug, base, launch, status in products:
                    if organisation.products.filter(name=name).exists():
                        continue
                    version = LicenceVersion.objects.get(slug=version_slug) if version_slug else None
                    product = product_create(
                        organisation=organisation, name=name, licence_version=version, actor="demo",
                        base_model=BaseModel.objects.filter(repo_id=base).first(), launch_date=launch, status=status,
                    )
                    if version is None:
                        self._meter(product)
                    elif status == Product.Status.LIVE:
                        licence_accept(
                            organisation=organisation, licence_version=version, product=product,
                            licence_sha256=version.licence_sha256, aup_version=version.aup_version,
                            accepted_by="demo",
                        )
            password = self._admin_password()
            user_model = get_user_model()
            admin = user_model.objects.filter(username="admin").first()
            if admin is None:
                admin = user_model.objects.create_superuser("admin", "admin@example.com", password)
            for organisation in Organisation.objects.filter(group__name=GROUP):
                Membership.objects.get_or_create(
                    user=admin, organisation=organisation, defaults={"role": Membership.Role.OWNER}
                )
        self.stdout.write(f"Demo group {GROUP!r}: {', '.join(DEMO)}; admin login: admin / {password}")

    def _meter(self, product: Product) -> None:
        """A few days of users for a product not built on Llama (once, when it is created), so the demo shows it
        metered and counted in its organisation's and group's figures like any other."""
        today = timezone.now().date()
        for days_ago in range(DEMO_DAYS):
            ids = [f"demo-search-user-{n}" for n in range(days_ago * 40, days_ago * 40 + DEMO_USERS_A_DAY)]
            activity_ingest(product=product, day=today - dt.timedelta(days=days_ago), user_ids=ids)

    def _admin_password(self) -> str:
        # Generated once and kept under var/, so every `make run` prints the same working login.
        path = settings.VAR_DIR / "demo-admin-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        return path.read_text().strip()

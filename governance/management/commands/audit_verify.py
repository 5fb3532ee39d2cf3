from django.core.management.base import BaseCommand, CommandError

from access.audit import audit_verify
from access.models import AuditEvent


class Command(BaseCommand):
    help = "Verify the hash chain of the audit log; exits non-zero naming the first entry that does not match."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        result = audit_verify()
        if not result.ok:
            raise CommandError(f"Audit chain BROKEN at entry #{result.first_bad_seq}: {result.reason} "
                               f"({result.checked} entries verified before it).")
        head = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
        head_text = f"head #{head.seq} {head.hash}" if head else "empty"
        self.stdout.write(f"Audit chain intact: {result.checked} entries, {head_text}.")

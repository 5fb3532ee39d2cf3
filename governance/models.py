"""Access (API keys) and the audit log."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from licensing.models import AffiliateGroup, Organisation, Product


class Scope(models.TextChoices):
    READ = "read", "Read"
    WRITE = "write", "Write"
    INGEST = "ingest", "Ingest activity"
    INFERENCE = "inference", "Call the inference gateway"
    ADMIN = "admin", "Administer keys"


class ApiKey(models.Model):
    """A tenant's API key. Only a SHA-256 of the secret is stored; the key itself is shown once."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible, non-secret start of the key")
    key_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    product = models.ForeignKey(
        Product, on_delete=models.CASCADE, null=True, blank=True, related_name="api_keys",
        help_text="When set, the key acts only on this product",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=200, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_expired(self, now: timezone.datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired()


class AuditEvent(models.Model):
    """One entry of the append-only, hash-chained audit log.

    ``hash`` covers this entry's fields and the previous entry's hash, so removing or editing any entry
    breaks every later link (see ``governance.audit.audit_verify``).
    """

    seq = models.PositiveBigIntegerField(unique=True)
    at = models.DateTimeField()
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=80, db_index=True)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, null=True, blank=True, related_name="audit_events"
    )
    group = models.ForeignKey(
        AffiliateGroup, on_delete=models.PROTECT, null=True, blank=True, related_name="audit_events"
    )
    object_type = models.CharField(max_length=80, blank=True)
    object_id = models.CharField(max_length=80, blank=True)
    data = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor}"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise ValueError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("Audit events are append-only.")


class Heartbeat(models.Model):
    """Last time a background component proved it was alive (beat runs a task that writes here)."""

    component = models.CharField(max_length=40, unique=True)
    seen_at = models.DateTimeField()


class ActivitySource(models.TextChoices):
    ID_BATCH = "id_batch", "User-id batch"
    SKETCH = "sketch", "Uploaded sketch"
    GATEWAY = "gateway", "Gateway traffic"


class ActivityPart(models.Model):
    """One accepted batch or sketch for a product and day, durable from the moment it is acknowledged.

    Parts are append-only; compaction folds them into ``Rollup`` rows and deletes them in one transaction, so
    storage grows with products x periods, not with requests or users. Only sketches are stored, never ids.
    """

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="activity_parts")
    day = models.DateField()
    source = models.CharField(max_length=20, choices=ActivitySource.choices)
    sketch = models.BinaryField()
    lg_k = models.PositiveSmallIntegerField()
    items = models.PositiveIntegerField(default=0, help_text="Ids in the batch (0 for an uploaded sketch)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["product", "day"])]


class Rollup(models.Model):
    """The union of every part of a scope (product, organisation or affiliate group) for a day or a month."""

    class Scope(models.TextChoices):
        PRODUCT_DAY = "product_day"
        PRODUCT_MONTH = "product_month"
        ORGANISATION_DAY = "organisation_day"
        ORGANISATION_MONTH = "organisation_month"
        GROUP_DAY = "group_day"
        GROUP_MONTH = "group_month"

    scope = models.CharField(max_length=20, choices=Scope.choices)
    scope_id = models.BigIntegerField()
    period = models.DateField(help_text="The day, or the first day of the month")
    sketch = models.BinaryField()
    lg_k = models.PositiveSmallIntegerField()
    id_batches = models.PositiveIntegerField(default=0)
    sketch_uploads = models.PositiveIntegerField(default=0)
    gateway_flushes = models.PositiveIntegerField(default=0)
    ids_received = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "scope_id", "period"], name="one_rollup_per_scope_period")
        ]


class IdempotencyRecord(models.Model):
    """The first answer to a request sent with an ``Idempotency-Key``, replayed to its retries."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the method, path and body")
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "key"], name="one_answer_per_idempotency_key")]

"""Metering, evaluation, alerts, webhooks and health: what governance records about the tenants' products."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.utils import timezone

from access.models import AffiliateGroup, Organisation
from licensing.models import Product
from licensing.months import month_end


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
    quarantined_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Set when the sketch cannot be read: kept, never compacted, left out of every figure")
    quarantine_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["product", "day"]),
            models.Index(fields=["product", "day"], condition=models.Q(quarantined_at__isnull=False),
                         name="quarantined_parts"),
        ]


class Rollup(models.Model):
    """The union of every part of a scope (product, organisation or affiliate group) for a day or a month."""

    class Grain(models.TextChoices):
        """What a rollup is the union of: whose activity (the ``scope`` column) over which period."""

        PRODUCT_DAY = "product_day"
        PRODUCT_MONTH = "product_month"
        ORGANISATION_DAY = "organisation_day"
        ORGANISATION_MONTH = "organisation_month"
        GROUP_DAY = "group_day"
        GROUP_MONTH = "group_month"

    scope = models.CharField(max_length=20, choices=Grain.choices)
    scope_id = models.BigIntegerField()
    period = models.DateField(help_text="The day, or the first day of the month")
    sketch = models.BinaryField()
    lg_k = models.PositiveSmallIntegerField()
    id_batches = models.PositiveIntegerField(default=0)
    sketch_uploads = models.PositiveIntegerField(default=0)
    gateway_flushes = models.PositiveIntegerField(default=0)
    ids_received = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)
    # A rollup whose sketch cannot be read is copied into a flagged row (the bytes are kept) and the live row
    # is rebuilt from the rollups below it (governance/metering/quarantine.py). Every read takes live rows only.
    quarantined_at = models.DateTimeField(null=True, blank=True, help_text="Set on the kept copy of an unreadable "
                                          "rollup; the live row (empty here) was rebuilt without it")
    quarantine_reason = models.CharField(max_length=300, blank=True)

    DAY_SCOPES = frozenset({Grain.PRODUCT_DAY, Grain.ORGANISATION_DAY, Grain.GROUP_DAY})

    @classmethod
    def is_settled(cls, scope: str, period: dt.date, *, today: dt.date | None = None) -> bool:
        """Whether a rollup's period ended more than METERING_SETTLE_DAYS ago (UTC): it is then stored as HLL_4.

        Activity for a settled period is still accepted (up to the retention) and folded in; the rollup is
        simply written in the compact form again.
        """
        today = today or timezone.now().date()
        last_day = period if scope in cls.DAY_SCOPES else month_end(period)
        return (today - last_day).days > settings.METERING_SETTLE_DAYS

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "scope_id", "period"],
                                    condition=models.Q(quarantined_at__isnull=True), name="one_live_rollup_per_period")
        ]
        indexes = [
            models.Index(fields=["scope", "scope_id", "period"], condition=models.Q(quarantined_at__isnull=False),
                         name="quarantined_rollups"),
        ]


class ProductMeteringPolicy(models.Model):
    """What an organisation allows a product's uploaded sketches to claim (docs/metering.md, "Bad input")."""

    product = models.OneToOneField(Product, on_delete=models.CASCADE, related_name="metering_policy")
    max_daily_users = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Most distinct users the product can have in a UTC day; an upload counting more is refused")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"metering policy of {self.product}"


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


# --- evaluation and alerts ----------------------------------------------------------------------------------


class ComplianceState(models.TextChoices):
    BELOW = "below", "Below"
    APPROACHING = "approaching", "Approaching"
    UNCERTAIN = "uncertain", "Uncertain"
    OVER = "over", "Over"
    GRANTED = "granted", "Granted"
    UNKNOWN = "unknown", "Unknown"
    EXEMPT = "exempt", "Exempt (clause 1.b.ii)"


class EvaluationRule(models.TextChoices):
    LICENCE_ACCURATE = "licence_accurate", "Licence-accurate snapshot (month before the version's release)"
    LAST_MONTH = "last_month", "Continuous monitoring: last complete calendar month"
    PROJECTED = "projected", "Continuous monitoring: month to date projected to month end"


class CountingBasis(models.TextChoices):
    DISTINCT_PEOPLE = "distinct_people", "Distinct people across all products and affiliates"
    SUM_OF_PRODUCTS = "sum_of_products", "Each product's MAU added up (most conservative)"


class OnUnknown(models.TextChoices):
    ALLOW = "allow", "Allow, and alert so someone declares the month"
    BLOCK = "block", "Block until the month has a figure"


class GroupPolicy(models.Model):
    """How a group is evaluated, alerted and gated. Created with defaults the first time a group needs one."""

    class Mode(models.TextChoices):
        ENFORCE = "enforce", "Enforce: block over or uncertain without a grant"
        GRACE = "grace", "Grace: block after the grace period"
        MONITOR = "monitor", "Monitor: never block, only alert"

    group = models.OneToOneField(AffiliateGroup, on_delete=models.CASCADE, related_name="policy")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ENFORCE)
    grace_days = models.PositiveIntegerField(default=30)
    levels = models.JSONField(default=list, help_text="Fractions of the threshold that raise 'approaching'")
    hysteresis = models.FloatField(default=0.02, help_text="Fall this fraction below a level to recover")
    forecast_days = models.PositiveIntegerField(default=90)
    email_enabled = models.BooleanField(default=True)
    email_recipients = models.JSONField(default=list, blank=True)
    webhooks_enabled = models.BooleanField(default=True)
    counting_basis = models.CharField(
        max_length=20, choices=CountingBasis.choices, default=CountingBasis.DISTINCT_PEOPLE,
        help_text="How the metered figure counts a person who uses two products (the licence does not say)")
    on_unknown = models.CharField(
        max_length=10, choices=OnUnknown.choices, default=OnUnknown.ALLOW,
        help_text="Whether a version whose tested month has no figure is blocked")
    updated_at = models.DateTimeField(auto_now=True)

    DEFAULT_LEVELS = [0.5, 0.75, 0.9]

    def __str__(self) -> str:
        return f"policy of {self.group}"


class DeclaredFigure(models.Model):
    """A group MAU figure an organisation declares for a month it was not metered in, with its evidence."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.PROTECT, related_name="declared_figures")
    month = models.DateField(help_text="First day of the month")
    mau = models.BigIntegerField()
    lower = models.BigIntegerField(null=True, blank=True, help_text="Lower bound of the figure; none: a point")
    upper = models.BigIntegerField(null=True, blank=True, help_text="Upper bound of the figure; none: a point")
    evidence = models.TextField(help_text="Where the figure comes from (report, system, reference)")
    declared_by = models.CharField(max_length=200)
    declared_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-declared_at", "-id"]

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise ValueError("Declared figures are append-only: declare a new one.")
        super().save(*args, **kwargs)


class CoverageAttestation(models.Model):
    """An officer's statement that the group's registered products and services are all of the group's for a
    month (section 2 counts every product or service of the licensee and its affiliates). Append-only."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.PROTECT, related_name="attestations")
    month = models.DateField(help_text="First day of the month")
    statement = models.TextField(help_text="What was checked, by whom, against which list")
    products = models.JSONField(default=list, help_text="The registered products and services attested, by name")
    attested_by = models.CharField(max_length=200)
    attested_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-attested_at", "-id"]

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise ValueError("Attestations are append-only: attest again.")
        super().save(*args, **kwargs)


class DeclarationProposal(models.Model):
    """A figure an organisation of a group proposes to declare; it counts only once a group admin confirms it
    (``declared_figure`` is then the ``DeclaredFigure`` it became)."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        CONFIRMED = "confirmed", "Confirmed"
        REJECTED = "rejected", "Rejected"

    group = models.ForeignKey(AffiliateGroup, on_delete=models.PROTECT, related_name="declaration_proposals")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+",
                                     help_text="The proposing organisation")
    month = models.DateField(help_text="First day of the month")
    mau = models.BigIntegerField()
    evidence = models.TextField()
    proposed_by = models.CharField(max_length=200)
    proposed_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PROPOSED)
    decided_by = models.CharField(max_length=200, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)
    declared_figure = models.OneToOneField(DeclaredFigure, on_delete=models.PROTECT, null=True, blank=True,
                                           related_name="proposal")

    class Meta:
        ordering = ["-proposed_at", "-id"]


class ComplianceStatus(models.Model):
    """The current status of a group for a licence version under one rule, with what produced it."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="statuses")
    licence_version = models.ForeignKey("licensing.LicenceVersion", on_delete=models.CASCADE, related_name="+")
    rule = models.CharField(max_length=20, choices=EvaluationRule.choices)
    state = models.CharField(max_length=12, choices=ComplianceState.choices)
    level = models.FloatField(null=True, blank=True, help_text="Highest alert level reached, as a fraction")
    month = models.DateField(null=True, blank=True)
    source = models.CharField(max_length=40, blank=True, help_text="metered, metered (partial month), declared or none")
    basis = models.CharField(max_length=20, blank=True, help_text="The counting basis of the figure used")
    considered = models.JSONField(default=list, help_text="Every figure of the month, with the state each gives")
    coverage = models.JSONField(default=dict, help_text="Products metered, not metered, attestation")
    estimate = models.BigIntegerField(null=True, blank=True)
    lower = models.BigIntegerField(null=True, blank=True)
    upper = models.BigIntegerField(null=True, blank=True)
    threshold = models.BigIntegerField()
    explanation = models.TextField()
    since = models.DateTimeField(help_text="When the group entered this state")
    crossed_on = models.DateField(
        null=True, blank=True, help_text="First day of the current stretch over or uncertain (grace counts from it)"
    )
    evaluated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "licence_version", "rule"], name="one_status_per_rule")
        ]

    @property
    def partial_coverage(self) -> bool:
        return self.state == ComplianceState.BELOW and bool(self.coverage) and not self.coverage.get("complete", True)

    @property
    def label(self) -> str:
        """The state as a person reads it: a below that does not cover the whole group is never a clean pass."""
        if self.state == ComplianceState.EXEMPT:
            return "exempt (1.b.ii)"
        return f"{self.state} (partial coverage)" if self.partial_coverage else self.state

    @property
    def bases(self) -> dict:
        """The metered figure of the month on both counting bases (distinct_people, sum_of_products)."""
        return self.considered.get("bases", {}) if isinstance(self.considered, dict) else {}

    @property
    def excluded(self) -> list:
        """Stored sketches of the month that could not be read (quarantined): the metered figures leave them out."""
        return self.considered.get("excluded", []) if isinstance(self.considered, dict) else []

    @property
    def figures(self) -> list:
        """Every figure of the month with the state it alone gives."""
        return self.considered.get("figures", []) if isinstance(self.considered, dict) else []


class StatusChange(models.Model):
    """History: every change of a status, with the figures that caused it."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="status_changes")
    licence_version = models.ForeignKey("licensing.LicenceVersion", on_delete=models.CASCADE, related_name="+")
    rule = models.CharField(max_length=20, choices=EvaluationRule.choices)
    previous_state = models.CharField(max_length=12, blank=True)
    state = models.CharField(max_length=12, choices=ComplianceState.choices)
    month = models.DateField(null=True, blank=True)
    estimate = models.BigIntegerField(null=True, blank=True)
    lower = models.BigIntegerField(null=True, blank=True)
    upper = models.BigIntegerField(null=True, blank=True)
    explanation = models.TextField()
    changed_at = models.DateTimeField()

    class Meta:
        ordering = ["-changed_at", "-id"]


class AccessDecision(models.Model):
    """May this group's keys use this licence version now? Read by the gateway and the provisioner."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="access_decisions")
    licence_version = models.ForeignKey("licensing.LicenceVersion", on_delete=models.CASCADE, related_name="+")
    allowed = models.BooleanField()
    reason = models.CharField(max_length=40)
    detail = models.TextField()
    decided_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "licence_version"], name="one_decision_per_group_version")
        ]


class GroupForecast(models.Model):
    group = models.OneToOneField(AffiliateGroup, on_delete=models.CASCADE, related_name="forecast")
    method = models.TextField()
    points = models.PositiveIntegerField()
    daily_growth = models.FloatField(null=True, blank=True)
    crossing_date = models.DateField(null=True, blank=True)
    earliest = models.DateField(null=True, blank=True)
    latest = models.DateField(null=True, blank=True)
    computed_at = models.DateTimeField()


class Alert(models.Model):
    """One announcement: a level crossed, an escalation, or a recovery, per group, version, level and month."""

    class Kind(models.TextChoices):
        RAISED = "raised", "Raised"
        RECOVERED = "recovered", "Recovered"
        TEST = "test", "Test"

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="alerts")
    licence_version = models.ForeignKey(
        "licensing.LicenceVersion", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    level = models.CharField(max_length=20, help_text='"50%", "75%", "90%", "uncertain", "over" or "forecast"')
    kind = models.CharField(max_length=10, choices=Kind.choices)
    month = models.DateField()
    rule = models.CharField(max_length=20, blank=True)
    figures = models.JSONField(default=dict)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=200, blank=True)
    acknowledgement_note = models.TextField(blank=True, help_text="What the person who acknowledged it noted")
    emailed_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="Email sent and webhooks queued")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["group", "licence_version", "level", "month", "kind"],
                condition=models.Q(kind__in=["raised", "recovered"]),
                name="one_alert_per_group_version_level_month",
            )
        ]


class AlertLevelState(models.Model):
    """Whether a level is currently active for a group and version (for escalation and hysteresis)."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="+")
    licence_version = models.ForeignKey(
        "licensing.LicenceVersion", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    level = models.CharField(max_length=20)
    active = models.BooleanField(default=False)
    changed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "licence_version", "level"], name="one_state_per_level")
        ]


class WebhookEndpoint(models.Model):
    """Where a group's alerts are POSTed. The signing secret is derived, never stored (see webhooks.py)."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    slack_format = models.BooleanField(default=False, help_text="Send a Slack-compatible payload")
    active = models.BooleanField(default=True)
    secret_salt = models.CharField(max_length=64)
    secret_prefix = models.CharField(max_length=12, help_text="Visible start of the signing secret")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries exhausted)"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    alert = models.ForeignKey(Alert, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries")
    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=60)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class DeliveryAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField()
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["attempted_at", "id"]

"""What the Llama licences say, who is bound by them, and what each licensee has accepted or been granted."""

from __future__ import annotations

import datetime as dt
from typing import Any, NoReturn

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from access.models import AffiliateGroup, Organisation
from licensing.terms import DEFAULT_MAU_THRESHOLD, LicenceTerms, test_month_for

sha256_validator = RegexValidator(r"^[0-9a-f]{64}$", "Must be a SHA-256 as 64 lower-case hexadecimal digits.")


version_slug_validator = RegexValidator(
    r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$", "Lower-case letters and digits, separated by single dots or hyphens."
)


class AppendOnlyError(ValidationError):
    pass


class AppendOnlyModel(models.Model):
    """A record that is never changed or deleted once written: a correction is a new record."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} records are append-only: record a new one instead.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(f"{type(self).__name__} records are append-only and cannot be deleted.")


class LicenceVersion(models.Model):
    """One Llama licence version in the catalogue, with the facts Corral enforces."""

    slug = models.CharField(
        max_length=40,
        unique=True,
        validators=[version_slug_validator],
        help_text="Stable identifier, e.g. llama-3.1 (lower-case letters, digits, dots and hyphens)",
    )
    name = models.CharField(max_length=80, unique=True)
    licence_name = models.CharField(max_length=120, help_text="e.g. Llama 3.1 Community License")
    release_date = models.DateField(help_text="The date the 700M clause is tested on")
    release_date_label = models.CharField(
        max_length=80, default="release date", help_text="What the licence header calls the date"
    )
    date_ambiguous = models.BooleanField(
        default=False, help_text="The licence text does not fix which release date its 700M test uses"
    )
    date_note = models.TextField(blank=True)
    mau_threshold = models.BigIntegerField(default=DEFAULT_MAU_THRESHOLD, validators=[MinValueValidator(1)])
    notice_line = models.TextField(help_text="The line a redistributor keeps in a \"Notice\" text file")
    attribution_display = models.CharField(
        max_length=80, blank=True, help_text='e.g. "Built with Llama"; blank when none is required'
    )
    derived_name_prefix = models.CharField(
        max_length=40, blank=True, help_text="A distributed derived model's name must begin with this"
    )
    derived_name_covers_outputs = models.BooleanField(
        default=False,
        help_text="The naming rule also covers a model made with the materials' outputs or results (3.1 and later)",
    )
    outputs_may_improve_other_models = models.BooleanField(
        help_text="False where the licence forbids using outputs to improve other large language models"
    )
    eu_multimodal_restriction = models.BooleanField(
        default=False, help_text="The AUP withholds multimodal rights from EU-domiciled licensees"
    )
    licence_url = models.URLField()
    licence_sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    licence_source = models.CharField(
        max_length=300, blank=True, help_text="Where the hashed text was read: repository@commit:path"
    )
    aup_version = models.CharField(max_length=40, help_text="Acceptable Use Policy version, e.g. llama-3.1")
    aup_url = models.URLField()
    aup_sha256 = models.CharField(max_length=64, validators=[sha256_validator], blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["release_date", "name"]

    def __str__(self) -> str:
        return self.name

    def test_month(self) -> dt.date:
        """First day of the calendar month the 700M test looks at: the month before the release date."""
        return test_month_for(self.release_date)

    def terms(self) -> LicenceTerms:
        return LicenceTerms(
            version=self.name,
            licence_name=self.licence_name,
            release_date=self.release_date,
            date_ambiguous=self.date_ambiguous,
            mau_threshold=self.mau_threshold,
            notice_line=self.notice_line,
            attribution_display=self.attribution_display,
            derived_name_prefix=self.derived_name_prefix,
            derived_name_covers_outputs=self.derived_name_covers_outputs,
            outputs_may_improve_other_models=self.outputs_may_improve_other_models,
            eu_multimodal_restriction=self.eu_multimodal_restriction,
            aup_version=self.aup_version,
            aup_url=self.aup_url,
            licence_url=self.licence_url,
        )


class BaseModel(models.Model):
    """A model Meta released under a licence version (the weights a product or deployment starts from)."""

    licence_version = models.ForeignKey(LicenceVersion, on_delete=models.PROTECT, related_name="base_models")
    repo_id = models.CharField(max_length=200, unique=True, help_text="Hugging Face repo id, e.g. meta-llama/...")
    multimodal = models.BooleanField(default=False)
    release_date = models.DateField(
        null=True, blank=True,
        help_text="This model's own release date, where it differs from its licence version's (Code Llama 70B)")
    date_note = models.TextField(blank=True, help_text="Where the date comes from, and why it matters")
    licence_note = models.TextField(
        blank=True, help_text="Why the model is under this licence version, where Meta's own sources differ")

    class Meta:
        ordering = ["licence_version__release_date", "repo_id"]

    def __str__(self) -> str:
        return self.repo_id

    def test_month(self) -> dt.date | None:
        """The month the 700M test looks at by this model's own release date; None where it has none."""
        return test_month_for(self.release_date) if self.release_date else None


class Product(models.Model):
    """A product or service an organisation makes available, built on a Llama model or not.

    Every product is metered and counts towards the 700M clause, which counts "the monthly active users of the
    products or services made available by or for Licensee, or Licensee's affiliates": all of them, not only
    those built on Llama. A product without a licence version has no licence obligations and cannot be
    deployed on the pool or called at the gateway.
    """

    class Status(models.TextChoices):
        DEVELOPMENT = "development", "In development"
        LIVE = "live", "Live"
        RETIRED = "retired", "Retired"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="products")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    licence_version = models.ForeignKey(
        LicenceVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="products",
        help_text="The Llama licence it is built under; empty for a product or service not built on Llama",
    )
    base_model = models.ForeignKey(
        BaseModel, on_delete=models.PROTECT, null=True, blank=True, related_name="products"
    )
    launch_date = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DEVELOPMENT)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organisation__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="unique_product_name_per_org"),
            # A base model is released under a licence version: a product not built on Llama has neither.
            models.CheckConstraint(condition=models.Q(licence_version__isnull=False) | models.Q(base_model__isnull=True),
                                   name="product_base_model_needs_licence_version"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def built_on_llama(self) -> bool:
        return self.licence_version_id is not None


class LicenceAcceptance(AppendOnlyModel):
    """A licensee accepted a licence version and its Acceptable Use Policy: who, when, and which text."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="acceptances")
    licence_version = models.ForeignKey(LicenceVersion, on_delete=models.PROTECT, related_name="acceptances")
    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, null=True, blank=True, related_name="acceptances"
    )
    accepted_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    accepted_by = models.CharField(max_length=200, help_text="The person or key that accepted, as recorded")
    accepted_at = models.DateTimeField(auto_now_add=True)
    licence_sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    aup_version = models.CharField(max_length=40)
    aup_sha256 = models.CharField(
        max_length=64, blank=True,
        help_text="SHA-256 of the Acceptable Use Policy text accepted; blank where the catalogue held none",
    )
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-accepted_at", "-id"]

    def __str__(self) -> str:
        return f"{self.organisation} accepted {self.licence_version} ({self.accepted_at:%Y-%m-%d})"


class MetaGrant(AppendOnlyModel):
    """A licence Meta granted beyond the 700M limit, for an affiliate group and the versions it covers."""

    group = models.ForeignKey(AffiliateGroup, on_delete=models.PROTECT, related_name="grants")
    licence_versions = models.ManyToManyField(LicenceVersion, related_name="grants")
    reference = models.CharField(max_length=200, help_text="Meta's reference or the agreement's title")
    scope = models.TextField(blank=True, help_text="What the grant covers, in its own words")
    granted_on = models.DateField()
    valid_from = models.DateField()
    valid_until = models.DateField(null=True, blank=True)
    supersedes = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="superseded_by"
    )
    revoked = models.BooleanField(default=False, help_text="This record withdraws the grant it supersedes")
    recorded_by = models.CharField(max_length=200)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-recorded_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(valid_until__isnull=True) | models.Q(valid_until__gte=models.F("valid_from")),
                name="grant_valid_until_after_valid_from",
            )
        ]

    def __str__(self) -> str:
        return f"{self.reference} ({self.group})"


class Exemption(models.Model):
    """Clause 1.b.ii: the organisation receives the Llama Materials only "as part of an integrated end user
    product" from another licensee, so Section 2 (the 700M clause) does not apply to it.

    Recorded with its evidence and never edited or deleted: withdrawing sets ``withdrawn_at``/``withdrawn_by``
    once (a conditional update), and a new exemption is a new row. At most one is in force per organisation.
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="exemptions")
    supplier = models.CharField(max_length=200, help_text="The licensee the integrated end-user product comes from")
    evidence = models.TextField(help_text="What shows it: the agreement, the product, the supplier's confirmation")
    recorded_by = models.CharField(max_length=200)
    recorded_at = models.DateTimeField(auto_now_add=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-recorded_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation"], condition=models.Q(withdrawn_at__isnull=True),
                                    name="one_exemption_in_force_per_organisation"),
            models.CheckConstraint(condition=~models.Q(evidence="") & ~models.Q(supplier=""),
                                   name="exemption_has_evidence_and_supplier"),
        ]

    def __str__(self) -> str:
        return f"{self.organisation} receives Llama from {self.supplier} (1.b.ii)"

    @property
    def in_force(self) -> bool:
        return self.withdrawn_at is None

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Exemptions are kept: withdraw one instead.")

"""Who is calling and what they may do: the tenants (affiliate groups, organisations, their members and group
admins, invitations), API keys and the audit log.

The ground floor every other app builds on; it imports none of them. The tables keep the names they were
created under (``licensing_*``, ``governance_*``) when these models moved here: renaming them would be a
migration for no gain.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.utils import timezone


class AffiliateGroup(models.Model):
    """Organisations under common control. The 700M limit applies to the group as a whole.

    What the whole group is judged by (its policy, declared figures, webhooks, alert acknowledgements) is
    changed only by the group's admins: the admins of its managing organisation and the people they appoint
    (``GroupAdmin``). The other organisations' members read the group's figures and statuses.
    """

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True)
    managing_organisation = models.ForeignKey(
        "Organisation", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="Its admins are the group's admins; the group's first organisation unless transferred",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "licensing_affiliategroup"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def managing_organisation_id_resolved(self) -> int | None:
        """The managing organisation's id; a group whose manager is unset is managed by its first organisation."""
        if self.managing_organisation_id is not None:
            return self.managing_organisation_id
        return self.organisations.order_by("pk").values_list("pk", flat=True).first()


class Organisation(models.Model):
    """A licensee, and a tenant of Corral. Belongs to exactly one affiliate group."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True)
    group = models.ForeignKey(AffiliateGroup, on_delete=models.PROTECT, related_name="organisations")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    eu_domiciled = models.BooleanField(
        default=False, help_text="Principal place of business in the European Union (Llama 3.2+ multimodal AUP)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "licensing_organisation"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Viewer"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "licensing_membership"
        constraints = [models.UniqueConstraint(fields=["user", "organisation"], name="one_membership_per_org")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organisation} ({self.role})"


class GroupAdmin(models.Model):
    """A person a group admin appointed to administer the whole affiliate group (policy, declarations, ...).

    The role holds while the person is a member of an active organisation of the group.
    """

    group = models.ForeignKey(AffiliateGroup, on_delete=models.CASCADE, related_name="admins")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="group_admin_roles")
    appointed_by = models.CharField(max_length=200)
    appointed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "licensing_groupadmin"
        ordering = ["appointed_at", "id"]
        constraints = [models.UniqueConstraint(fields=["group", "user"], name="one_group_admin_role_per_user")]

    def __str__(self) -> str:
        return f"{self.user} administers {self.group}"
class Invitation(models.Model):
    """An organisation's offer of a role to whoever holds the link, sent to an email address.

    The link carries a token of two parts: ``selector`` (stored, to find the row) and a secret whose SHA-256 is
    ``token_hash`` (compared in constant time); the token itself is never stored. It works once, until
    ``expires_at``, unless revoked.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(help_text="Where the link was sent; the person accepting may use another account")
    role = models.CharField(max_length=20, choices=Membership.Role.choices)
    selector = models.CharField(max_length=16, unique=True, help_text="Non-secret start of the token")
    token_hash = models.CharField(max_length=64, help_text="SHA-256 of the token")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=200, blank=True)

    class Meta:
        db_table = "licensing_invitation"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(accepted_at__isnull=True) | models.Q(revoked_at__isnull=True),
                name="invitation_accepted_or_revoked_not_both",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.organisation} ({self.role})"

    def state(self, now: dt.datetime) -> str:
        if self.accepted_at is not None:
            return self.State.ACCEPTED
        if self.revoked_at is not None:
            return self.State.REVOKED
        if self.expires_at <= now:
            return self.State.EXPIRED
        return self.State.PENDING


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
        "licensing.Product", on_delete=models.CASCADE, null=True, blank=True, related_name="api_keys",
        help_text="When set, the key acts only on this product",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=200, blank=True)
    deleted_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Deleted through the API: revoked and no longer served by it; the row stays for the audit trail")
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # The inference gateway's limits for this key; empty takes the organisation's (inference.GatewayLimit).
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    default_user = models.CharField(
        max_length=200, blank=True,
        help_text="Gateway: the user metered for MAU when a request names none (no `user`, no X-Corral-User)")

    class Meta:
        db_table = "governance_apikey"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired()


class AuditEvent(models.Model):
    """One entry of the append-only, hash-chained audit log.

    ``hash`` covers this entry's fields and the previous entry's hash, so removing or editing any entry
    breaks every later link (see ``access.audit.audit_verify``).
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
        db_table = "governance_auditevent"
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor}"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise ValueError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("Audit events are append-only.")

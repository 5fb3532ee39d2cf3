"""Writes of the licensing app. Every write that matters to counsel lands in the audit log with it."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import smtplib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, models, transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.text import slugify

from access.audit import audit_record
from access.models import AffiliateGroup, GroupAdmin, Invitation, Membership, Organisation
from licensing import signals
from licensing.eu_multimodal import eu_multimodal_refusal
from licensing.models import BaseModel, Exemption, LicenceAcceptance, LicenceVersion, MetaGrant, Product

logger = logging.getLogger(__name__)


def _unique_slug(model: type[AffiliateGroup] | type[Organisation], name: str) -> str:
    base = slugify(name)[:180] or "org"
    slug, n = base, 1
    while model.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def group_get_or_create(*, name: str) -> tuple[AffiliateGroup, bool]:
    """The named group, created with its default alert and enforcement policy when it does not exist."""
    group = AffiliateGroup.objects.filter(name=name).first()
    if group:
        return group, False
    group = AffiliateGroup.objects.create(name=name, slug=_unique_slug(AffiliateGroup, name))
    signals.group_created.send(sender=AffiliateGroup, group=group)
    return group, True


def _max_length(model: type[models.Model], field: str) -> int:
    """The length limit of a text column (every CharField has one)."""
    column = model._meta.get_field(field)
    assert isinstance(column, models.Field) and column.max_length is not None, f"{model.__name__}.{field}"
    return column.max_length


def organisation_create(*, name: str, group_name: str, actor: str, eu_domiciled: bool = False) -> Organisation:
    """Create an organisation in the named affiliate group, creating the group when it does not exist."""
    name, group_name = name.strip(), group_name.strip()
    name_limit = _max_length(Organisation, "name")
    group_limit = _max_length(AffiliateGroup, "name")
    if not name:
        raise ValidationError({"name": "An organisation needs a name."})
    if len(name) > name_limit:
        raise ValidationError({"name": f"At most {name_limit} characters."})
    if len(group_name) > group_limit:
        raise ValidationError({"group": f"At most {group_limit} characters."})
    if Organisation.objects.filter(name=name).exists():
        raise ValidationError({"name": f"An organisation named {name!r} already exists."})
    with transaction.atomic():
        group, _ = group_get_or_create(name=group_name or name)
        organisation = Organisation.objects.create(
            name=name, slug=_unique_slug(Organisation, name), group=group, eu_domiciled=eu_domiciled
        )
        if group.managing_organisation_id is None:  # a group is managed by its first organisation
            AffiliateGroup.objects.filter(pk=group.pk, managing_organisation__isnull=True).update(
                managing_organisation=organisation)
        audit_record(
            action="organisation.created",
            actor=actor,
            organisation=organisation,
            obj=organisation,
            data={"name": name, "group": group.name},
        )
    return organisation


# --- the organisation's own facts ------------------------------------------------------------------------


@dataclass(frozen=True)
class DomicileChange:
    organisation: Organisation
    changed: bool
    drained: list[Any]  # the deployments (inference.models.Deployment) the EU clause no longer allows


def organisation_domicile_set(*, organisation: Organisation, eu_domiciled: object, actor: str) -> DomicileChange:
    """Record whether the organisation's principal place of business is in the EU, and apply it at once.

    Moving into the EU drains every running deployment the Llama 3.2 / 3.3 / 4 AUPs no longer allow it (their
    multimodal models) and raises an alert per version saying why; a domicile already in the EU drains again
    whatever slipped through (safe to run twice). Products stay as recorded. The gateway refuses such a model
    within its cache time (GATEWAY_CACHE_SECONDS) whatever the drain does.
    """
    if not isinstance(eu_domiciled, bool):
        raise ValidationError({"eu_domiciled": "Must be true or false."})
    with transaction.atomic():
        locked = Organisation.objects.select_for_update().select_related("group").get(pk=organisation.pk)
        changed = locked.eu_domiciled != eu_domiciled
        if changed:
            locked.eu_domiciled = eu_domiciled
            locked.save(update_fields=["eu_domiciled"])
            audit_record(action="organisation.domicile_changed", actor=actor, organisation=locked, obj=locked,
                         data={"eu_domiciled": eu_domiciled, "previous": not eu_domiciled})
        drained = _deployments_drain(locked, actor) if eu_domiciled else []
    organisation.eu_domiciled = locked.eu_domiciled
    return DomicileChange(organisation=locked, changed=changed, drained=drained)


def _deployments_drain(organisation: Organisation, actor: str) -> list[Any]:
    # The pool sits above licensing and drains through a receiver (inference/receivers.py).
    responses = signals.organisation_in_eu.send(sender=Organisation, organisation=organisation, actor=actor)
    return [deployment for _receiver, drained in responses for deployment in (drained or [])]


EVIDENCE_NEEDED = ("An exemption needs its evidence: what shows the organisation receives Llama only as part of "
                   "an integrated end user product (the agreement, the product, the supplier's confirmation).")
SUPPLIER_NEEDED = "Name the licensee the integrated end user product comes from."


def exemption_record(*, organisation: Organisation, supplier: str, evidence: str, recorded_by: str) -> Exemption:
    """Record that the organisation receives Llama only "as part of an integrated end user product" from
    another licensee (clause 1.b.ii), so Section 2's 700M clause does not apply to it.

    Refused without evidence, while another exemption is in force, and while the organisation runs Llama models
    on the pool: then it receives the materials themselves, not only as part of someone's product (and while the
    exemption is in force, a deployment is refused). Its products may be built on Llama: the integrated product
    it received is one, and its other obligations (the AUP, the Notice) still hold; only Section 2 does not.
    """
    supplier, evidence = (supplier or "").strip(), (evidence or "").strip()
    limit = _max_length(Exemption, "supplier")
    errors: dict[str, str] = {}
    if not evidence:
        errors["evidence"] = EVIDENCE_NEEDED
    if not supplier:
        errors["supplier"] = SUPPLIER_NEEDED
    elif len(supplier) > limit:
        errors["supplier"] = f"At most {limit} characters."
    if errors:
        raise ValidationError(errors)
    deployed = list(organisation.deployments.filter(deleted=False).values_list("served_model_name", flat=True)[:5])
    if deployed:
        raise ValidationError(
            f"{organisation.name} runs Llama models on the pool ({', '.join(deployed)}): it receives the Llama "
            f"Materials themselves, not only as part of another licensee's integrated end user product. Delete the "
            f"deployments first.")
    with transaction.atomic():
        Organisation.objects.select_for_update().filter(pk=organisation.pk).first()  # one recording at a time
        current = Exemption.objects.filter(organisation=organisation, withdrawn_at__isnull=True).first()
        if current is not None:
            raise ValidationError(f"{organisation.name} already has an exemption in force (supplier "
                                  f"{current.supplier}, recorded {current.recorded_at:%Y-%m-%d}): withdraw it first.")
        exemption = Exemption.objects.create(organisation=organisation, supplier=supplier, evidence=evidence,
                                             recorded_by=recorded_by)
        audit_record(action="exemption.recorded", actor=recorded_by, organisation=organisation, obj=exemption,
                     data={"clause": "1.b.ii", "supplier": supplier, "evidence": evidence})
        transaction.on_commit(lambda: _evaluation_schedule(organisation.group_id), robust=True)
    return exemption


def exemption_withdraw(*, organisation: Organisation, withdrawn_by: str) -> Exemption:
    """Withdraw the exemption in force: the record stays, marked withdrawn, and Section 2 applies again."""
    with transaction.atomic():
        current = Exemption.objects.select_for_update().filter(organisation=organisation,
                                                               withdrawn_at__isnull=True).first()
        if current is None:
            raise ValidationError(f"{organisation.name} has no exemption in force.")
        now = timezone.now()
        # Conditional, so a concurrent withdrawal of the same record changes nothing a second time.
        if Exemption.objects.filter(pk=current.pk, withdrawn_at__isnull=True).update(
                withdrawn_at=now, withdrawn_by=withdrawn_by) != 1:
            raise ValidationError(f"{organisation.name} has no exemption in force.")
        current.refresh_from_db()
        audit_record(action="exemption.withdrawn", actor=withdrawn_by, organisation=organisation, obj=current,
                     data={"clause": "1.b.ii", "supplier": current.supplier,
                           "recorded_at": current.recorded_at.isoformat()})
        transaction.on_commit(lambda: _evaluation_schedule(organisation.group_id), robust=True)
    return current


# --- products -----------------------------------------------------------------------------------------------


def product_check(*, organisation: Organisation, licence_version: LicenceVersion | None,
                  base_model: BaseModel | None, check_base_model: bool = True) -> None:
    """The rules a product's licence version and base model follow, as a ValidationError naming the field.

    ``check_base_model``: whether the base model is being chosen now (an unchanged one is not judged again, so
    a product recorded before its organisation moved to the EU can still be edited).
    """
    if licence_version is None:
        if base_model is not None:
            raise ValidationError({"licence_version": (
                f"{base_model.repo_id} is released under {base_model.licence_version.name}: a product on it is built "
                f"on Llama, so give its licence version ({base_model.licence_version.slug})."
            )})
        return  # a product or service not built on Llama: metered and counted, no licence to check
    if base_model is not None and base_model.licence_version_id != licence_version.pk:
        raise ValidationError({"base_model": (
            f"{base_model.repo_id} is released under {base_model.licence_version.name}, not {licence_version.name}."
        )})
    if check_base_model and base_model is not None:
        refusal = eu_multimodal_refusal(
            version_name=licence_version.name, licence_name=licence_version.licence_name,
            restricted=licence_version.eu_multimodal_restriction, multimodal=base_model.multimodal,
            eu_domiciled=organisation.eu_domiciled)
        if refusal:
            raise ValidationError({"base_model": refusal})


def _check_unique_name(organisation: Organisation, name: str, exclude_pk: int | None = None) -> None:
    clash = Product.objects.filter(organisation=organisation, name=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ValidationError({"name": f"This organisation already has a product named {name!r}."})


def product_create(
    *,
    organisation: Organisation,
    name: str,
    actor: str,
    licence_version: LicenceVersion | None = None,
    base_model: BaseModel | None = None,
    launch_date: dt.date | None = None,
    status: str = Product.Status.DEVELOPMENT,
    description: str = "",
) -> Product:
    """Register a product or service; without ``licence_version`` it is one not built on Llama."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "A product needs a name."})
    product_check(organisation=organisation, licence_version=licence_version, base_model=base_model)
    _check_unique_name(organisation, name)
    with transaction.atomic():
        product = Product.objects.create(
            organisation=organisation,
            name=name,
            licence_version=licence_version,
            base_model=base_model,
            launch_date=launch_date,
            status=status,
            description=description,
        )
        audit_record(
            action="product.created",
            actor=actor,
            organisation=organisation,
            obj=product,
            data={"name": name, "licence_version": licence_version.slug if licence_version else None,
                  "base_model": base_model.repo_id if base_model else None, "status": status},
        )
    return product


_PRODUCT_EDITABLE = {"name", "description", "licence_version", "base_model", "launch_date", "status"}


def product_update(*, product: Product, actor: str, **changes: object) -> Product:
    """Change a product's editable fields. Its organisation never changes: products do not move tenants."""
    unknown = set(changes) - _PRODUCT_EDITABLE
    if unknown:
        raise ValidationError({field: "This field cannot be changed." for field in sorted(unknown)})
    licence_version: LicenceVersion | None = changes.get("licence_version", product.licence_version)  # type: ignore[assignment]
    base_model: BaseModel | None = changes.get("base_model", product.base_model)  # type: ignore[assignment]
    if "licence_version" in changes and "base_model" not in changes and base_model is not None:
        if licence_version is None or base_model.licence_version_id != licence_version.pk:
            base_model = None  # the old base model belongs to the old version
            changes["base_model"] = None
    if licence_version is None and product.licence_version_id is not None and \
            product.deployments.filter(deleted=False).exists():
        raise ValidationError({"licence_version": (
            "The product has deployments on the pool, which run a Llama model: delete them before recording the "
            "product as not built on Llama.")})
    product_check(organisation=product.organisation, licence_version=licence_version, base_model=base_model,
                  check_base_model="base_model" in changes)
    if "name" in changes:
        _check_unique_name(product.organisation, str(changes["name"]), exclude_pk=product.pk)
    before = {field: _plain(getattr(product, field)) for field in changes}
    with transaction.atomic():
        for field, value in changes.items():
            setattr(product, field, value)
        product.save()
        audit_record(
            action="product.updated",
            actor=actor,
            organisation=product.organisation,
            obj=product,
            data={"before": before, "after": {field: _plain(getattr(product, field)) for field in changes}},
        )
    return product


def _plain(value: object) -> object:
    if isinstance(value, (LicenceVersion,)):
        return value.slug
    if isinstance(value, BaseModel):
        return value.repo_id
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def product_delete(*, product: Product, actor: str) -> None:
    """Delete a product that has no acceptance records; one with a record is retired instead, keeping it."""
    if product.acceptances.exists():
        raise ValidationError(
            {"product": "This product has licence acceptance records, which are kept: set its status to retired."}
        )
    with transaction.atomic():
        audit_record(
            action="product.deleted",
            actor=actor,
            organisation=product.organisation,
            obj=product,
            data={"name": product.name},
        )
        product.delete()


def licence_accept(
    *,
    organisation: Organisation,
    licence_version: LicenceVersion,
    licence_sha256: str,
    aup_version: str,
    accepted_by: str,
    aup_sha256: str | None = None,
    product: Product | None = None,
    user: User | AnonymousUser | None = None,
    note: str = "",
) -> LicenceAcceptance:
    """Record that ``accepted_by`` accepted this version's licence and AUP, each identified by its text's SHA-256.

    Both hashes must be the catalogue's current ones: accepting a text other than the one Corral knows is
    refused, so the record always says which words were agreed to. A caller that shows the texts to a person
    passes the AUP hash it showed (the REST API requires it); ``aup_sha256=None`` records the catalogue's current
    one, for callers that show nothing (management commands, scripts). A version whose catalogue row holds no AUP
    hash is accepted with a blank one.
    """
    aup_sha256 = licence_version.aup_sha256 if aup_sha256 is None else aup_sha256.lower()
    errors: dict[str, str] = {}
    if licence_sha256.lower() != licence_version.licence_sha256:
        errors["licence_sha256"] = (
            f"Does not match the {licence_version.name} licence text in the catalogue "
            f"(expected {licence_version.licence_sha256})."
        )
    if aup_version != licence_version.aup_version:
        errors["aup_version"] = (
            f"{licence_version.name} incorporates Acceptable Use Policy {licence_version.aup_version!r}, "
            f"not {aup_version!r}."
        )
    if aup_sha256 != licence_version.aup_sha256:
        errors["aup_sha256"] = (
            f"Does not match the text of Acceptable Use Policy {licence_version.aup_version!r} in the catalogue "
            + (f"(expected {licence_version.aup_sha256})." if licence_version.aup_sha256
               else "(it holds no hash for it: leave this blank).")
        )
    if product is not None:
        if product.organisation_id != organisation.pk:
            errors["product"] = "The product belongs to another organisation."
        elif product.licence_version is None:
            errors["product"] = f"{product.name} is not built on Llama: it has no licence to accept."
        elif product.licence_version_id != licence_version.pk:
            errors["product"] = f"The product is built on {product.licence_version.name}, not {licence_version.name}."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        acceptance = LicenceAcceptance.objects.create(
            organisation=organisation,
            licence_version=licence_version,
            product=product,
            accepted_by_user=user if isinstance(user, User) and user.pk else None,
            accepted_by=accepted_by,
            licence_sha256=licence_sha256.lower(),
            aup_version=aup_version,
            aup_sha256=aup_sha256,
            note=note,
        )
        audit_record(
            action="licence.accepted",
            actor=accepted_by,
            organisation=organisation,
            obj=acceptance,
            data={
                "licence_version": licence_version.slug,
                "licence_sha256": acceptance.licence_sha256,
                "aup_version": aup_version,
                "aup_sha256": aup_sha256,
                "product": product and product.pk,
            },
        )
    return acceptance


def grant_record(
    *,
    group: AffiliateGroup,
    licence_versions: Iterable[LicenceVersion],
    reference: str,
    granted_on: dt.date,
    valid_from: dt.date,
    recorded_by: str,
    valid_until: dt.date | None = None,
    scope: str = "",
    supersedes: MetaGrant | None = None,
    revoked: bool = False,
) -> MetaGrant:
    """Record a licence Meta granted (or, with ``revoked``, its withdrawal) as a new, unchangeable record."""
    versions = list(licence_versions)
    errors: dict[str, str] = {}
    if not versions:
        errors["licence_versions"] = "A grant covers at least one licence version."
    if valid_until is not None and valid_until < valid_from:
        errors["valid_until"] = "Must not be before valid_from."
    if supersedes is not None and supersedes.group_id != group.pk:
        errors["supersedes"] = "The superseded grant belongs to another group."
    if revoked and supersedes is None:
        errors["revoked"] = "A revocation must name the grant it withdraws in supersedes."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        grant = MetaGrant.objects.create(
            group=group,
            reference=reference,
            scope=scope,
            granted_on=granted_on,
            valid_from=valid_from,
            valid_until=valid_until,
            supersedes=supersedes,
            revoked=revoked,
            recorded_by=recorded_by,
        )
        grant.licence_versions.set(versions)
        audit_record(
            action="grant.revoked" if revoked else "grant.recorded",
            actor=recorded_by,
            group=group,
            obj=grant,
            data={
                "reference": reference,
                "licence_versions": [v.slug for v in versions],
                "valid_from": valid_from,
                "valid_until": valid_until,
                "supersedes": supersedes and supersedes.pk,
            },
        )
        # A grant changes what the group may use: evaluate it again (and with it the gateway's decision).
        transaction.on_commit(lambda: _evaluation_schedule(group.pk))
    return grant


def _evaluation_schedule(group_id: int) -> None:
    # Urgent: the gateway must serve (or stop serving) within seconds of a grant, even while activity keeps
    # an evaluation of the group looping at its 5-second spacing. Governance evaluates (governance/receivers.py).
    signals.group_judgement_changed.send(sender=AffiliateGroup, group_id=group_id, urgent=True)


# --- members ------------------------------------------------------------------------------------------------

def _owners_left(organisation: Organisation, without: Membership) -> int:
    return (Membership.objects.filter(organisation=organisation, role=Membership.Role.OWNER)
            .exclude(pk=without.pk).count())


def membership_change_role(*, membership: Membership, role: str, actor: str, actor_is_owner: bool) -> Membership:
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}; one of {', '.join(Membership.Role.values)}."})
    if Membership.Role.OWNER in (role, membership.role) and not actor_is_owner:
        raise ValidationError({"role": "Only an owner can make someone an owner or change an owner's role."})
    with transaction.atomic():
        locked = Membership.objects.select_for_update().get(pk=membership.pk)
        if locked.role == Membership.Role.OWNER and role != Membership.Role.OWNER and \
                not _owners_left(locked.organisation, locked):
            raise ValidationError({"role": f"{locked.organisation.name} needs at least one owner."})
        if locked.role != role:
            previous, locked.role = locked.role, role
            locked.save(update_fields=["role"])
            audit_record(action="membership.role_changed", actor=actor, organisation=locked.organisation,
                         obj=locked, data={"username": locked.user.get_username(), "from": previous, "to": role})
    return locked


def membership_remove(*, membership: Membership, actor: str, actor_is_owner: bool) -> None:
    if membership.role == Membership.Role.OWNER and not actor_is_owner:
        raise ValidationError("Only an owner can remove an owner.")
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("organisation", "user").get(pk=membership.pk)
        if locked.role == Membership.Role.OWNER and not _owners_left(locked.organisation, locked):
            raise ValidationError(f"{locked.organisation.name} needs at least one owner.")
        audit_record(action="membership.removed", actor=actor, organisation=locked.organisation, obj=locked,
                     data={"username": locked.user.get_username(), "role": locked.role})
        locked.delete()


# --- invitations ----------------------------------------------------------------------------------------------
#
# A person joins an organisation by accepting an invitation an admin sent to an email address: nobody is attached
# to an organisation without their consent, and inviting never looks up or reveals whether an account exists.

# Roles from the least to the most: a person grants a role only up to their own.
ROLE_ORDER: list[str] = [Membership.Role.VIEWER, Membership.Role.MEMBER, Membership.Role.ADMIN, Membership.Role.OWNER]
_SELECTOR_LENGTH = 16
_NO_HASH = "0" * 64
_UNUSABLE: dict[str, str] = {
    Invitation.State.ACCEPTED: "This invitation has already been used.",
    Invitation.State.REVOKED: "This invitation was withdrawn.",
    Invitation.State.EXPIRED: "This invitation has expired.",
}
# Backends that deliver nothing: the console backend would print the link, token included, into the log.
_NON_DELIVERING_BACKENDS = {
    "django.core.mail.backends.console.EmailBackend",
    "django.core.mail.backends.dummy.EmailBackend",
}


class InvitationUnusable(Exception):
    """The invitation was used, withdrawn or has expired; the message is safe to show to the link's holder."""

    def __init__(self, state: str) -> None:
        self.state = state
        super().__init__(_UNUSABLE[state])


class _NotClaimed(Exception):
    pass


def roles_up_to(ceiling: str) -> list[str]:
    """The roles a person holding ``ceiling`` may grant, from the least."""
    return ROLE_ORDER[: ROLE_ORDER.index(ceiling) + 1] if ceiling in ROLE_ORDER else []


def invitation_lifetime() -> dt.timedelta:
    return dt.timedelta(days=settings.INVITATION_EXPIRY_DAYS)


def _token_hash(token: str) -> str:
    # The secret part carries 256 bits of randomness, so one SHA-256 is as strong as a slow hash (as for API keys).
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_create(*, organisation: Organisation, email: str, role: str, actor: str,
                      actor_role: str) -> tuple[Invitation, str]:
    """Invite ``email`` to the organisation with ``role``, at most ``actor_role``, and return the invitation with
    its token, which is never stored and cannot be shown again. An earlier pending invitation of the same address
    to the same organisation is revoked: the newest link is the one that works.

    No account is looked up: the answer is the same whether or not anyone with this address uses Corral.
    """
    from django.core.validators import validate_email

    errors: dict[str, str] = {}
    email = get_user_model().objects.normalize_email(email.strip())
    try:
        validate_email(email)
    except ValidationError:
        errors["email"] = "Enter an email address."
    if role not in ROLE_ORDER:
        errors["role"] = f"Unknown role {role!r}; one of {', '.join(Membership.Role.values)}."
    elif role not in roles_up_to(actor_role):
        errors["role"] = f"Your role in {organisation.name} lets you invite at most: {actor_role}."
    if errors:
        raise ValidationError(errors)
    selector = secrets.token_hex(_SELECTOR_LENGTH // 2)
    token = selector + secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        earlier = Invitation.objects.filter(organisation=organisation, email__iexact=email, accepted_at__isnull=True,
                                            revoked_at__isnull=True, expires_at__gt=now)
        for invitation in earlier:
            _revoke(invitation, actor=actor, now=now, reason="replaced")
        invitation = Invitation.objects.create(
            organisation=organisation, email=email, role=role, selector=selector, token_hash=_token_hash(token),
            created_by=actor, expires_at=now + invitation_lifetime(),
        )
        audit_record(action="invitation.created", actor=actor, organisation=organisation, obj=invitation,
                     data={"email": email, "role": role, "expires_at": invitation.expires_at})
    return invitation, token


def invitation_email_send(*, invitation: Invitation, link: str) -> bool:
    """Email the link to the invited address. False when Corral has no mail server (the console and dummy
    backends) or the server refused: the inviting admin then passes the link on. The link is never logged."""
    if settings.EMAIL_BACKEND in _NON_DELIVERING_BACKENDS:
        return False
    body = render_to_string("emails/invitation.txt", {
        "invitation": invitation, "organisation": invitation.organisation, "link": link,
        "inviter": invitation.created_by.removeprefix("user:"),
        "role": invitation.get_role_display().lower(),
    })
    try:
        send_mail(f"[Corral] Invitation to join {invitation.organisation.name}", body, settings.DEFAULT_FROM_EMAIL,
                  [invitation.email])
    except (smtplib.SMTPException, OSError) as exc:
        logger.warning("could not email invitation %s: %s", invitation.pk, type(exc).__name__)
        return False
    return True


def invitation_for_token(*, token: str) -> Invitation | None:
    """The invitation ``token`` opens, in whatever state, or None.

    Unscoped on purpose: the token is the credential. The hash is compared in constant time, and computed even
    when no invitation has the token's selector, so timing does not tell which selectors exist.
    """
    invitation = None
    if _SELECTOR_LENGTH < len(token) <= 100:
        invitation = (Invitation.objects.select_related("organisation", "organisation__group")
                      .filter(selector=token[:_SELECTOR_LENGTH]).first())
    matched = hmac.compare_digest(_token_hash(token), invitation.token_hash if invitation else _NO_HASH)
    return invitation if invitation is not None and matched else None


def invitation_open(*, token: str, actor: str) -> Invitation:
    """The pending invitation ``token`` opens. Raises ``Invitation.DoesNotExist`` when it opens none, and
    ``InvitationUnusable`` when it was used, withdrawn or has expired, after recording the attempt."""
    invitation = invitation_for_token(token=token)
    if invitation is None:
        raise Invitation.DoesNotExist("No such invitation.")
    state = invitation.state(timezone.now())
    if state != Invitation.State.PENDING:
        _record_refusal(invitation, actor=actor, state=state)
        raise InvitationUnusable(state)
    return invitation


def invitation_accept(*, invitation: Invitation, user: Any) -> Membership:
    """Make ``user`` a member with the invited role and use the invitation up.

    Whoever holds the link may accept it with their account, whatever that account's email: the link is the proof,
    as for a new account (the audit entry says whether the addresses matched). Raises ``ValidationError`` when the
    user is already a member (the invitation stays usable) and ``InvitationUnusable`` when it was used, withdrawn or
    expired in the meantime.
    """
    if Membership.objects.filter(user=user, organisation_id=invitation.organisation_id).exists():
        raise ValidationError(f"You are already a member of {invitation.organisation.name}.")
    try:
        return _accept(invitation, lambda: user, new_account=False)
    except IntegrityError as exc:  # the same person accepting two invitations at once
        raise ValidationError(f"You are already a member of {invitation.organisation.name}.") from exc


def invitation_accept_new_account(*, invitation: Invitation, username: str, password: str) -> Membership:
    """Create an account with the invited email address (the link proves it) and accept the invitation with it.
    The account exists only if the invitation was accepted."""
    User = get_user_model()
    username = username.strip()
    errors: dict[str, list[str]] = {}
    if not username:
        errors["username"] = ["Choose a username."]
    else:
        try:
            username_field = User._meta.get_field(User.USERNAME_FIELD)
            assert isinstance(username_field, models.Field)  # a column, not a relation
            username_field.run_validators(username)
        except ValidationError as exc:
            errors["username"] = exc.messages
    if "username" not in errors and User.objects.filter(**{f"{User.USERNAME_FIELD}__iexact": username}).exists():
        errors["username"] = ["This username is taken; choose another."]
    try:
        validate_password(password, user=User(username=username, email=invitation.email))
    except ValidationError as exc:
        errors["password"] = exc.messages
    if errors:
        raise ValidationError(errors)
    try:
        return _accept(invitation, lambda: User.objects.create_user(username, invitation.email, password),
                       new_account=True)
    except IntegrityError as exc:  # someone took the username a moment ago
        raise ValidationError({"username": "This username is taken; choose another."}) from exc


def _accept(invitation: Invitation, get_user: Callable[[], Any], *, new_account: bool) -> Membership:
    now = timezone.now()
    try:
        with transaction.atomic():
            user = get_user()
            # Conditional, so the link works once however many requests race for it.
            claimed = Invitation.objects.filter(
                pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now,
            ).update(accepted_at=now, accepted_by=user)
            if claimed != 1:
                raise _NotClaimed  # rolls a new account back with it
            membership = Membership.objects.create(user=user, organisation=invitation.organisation,
                                                   role=invitation.role)
            audit_record(action="invitation.accepted", actor=f"user:{user.get_username()}",
                         organisation=invitation.organisation, obj=invitation,
                         data={"username": user.get_username(), "role": invitation.role, "membership": membership.pk,
                               "new_account": new_account,
                               "email_matched": (user.email or "").lower() == invitation.email.lower()})
    except _NotClaimed:
        invitation.refresh_from_db()
        state = invitation.state(now)
        _record_refusal(invitation, actor="anonymous" if new_account else f"user:{user.get_username()}", state=state)
        raise InvitationUnusable(state) from None
    invitation.refresh_from_db()
    return membership


def _record_refusal(invitation: Invitation, *, actor: str, state: str) -> None:
    audit_record(action="invitation.use_refused", actor=actor, organisation=invitation.organisation, obj=invitation,
                 data={"reason": state, "email": invitation.email, "role": invitation.role})


def invitation_revoke(*, invitation: Invitation, actor: str, actor_role: str) -> Invitation:
    """Withdraw a pending invitation: its link stops working at once. The invited role must be within the
    actor's own (only an owner withdraws an invitation to be an owner, as only an owner removes an owner)."""
    if invitation.role not in roles_up_to(actor_role):
        raise ValidationError(f"Your role in {invitation.organisation.name} cannot withdraw an invitation to be "
                              f"{invitation.role}.")
    with transaction.atomic():
        if not _revoke(invitation, actor=actor, now=timezone.now(), reason="revoked"):
            raise ValidationError("This invitation was already accepted or withdrawn.")
    invitation.refresh_from_db()
    return invitation


def _revoke(invitation: Invitation, *, actor: str, now: dt.datetime, reason: str) -> bool:
    changed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=now, revoked_by=actor)
    if changed:
        audit_record(action="invitation.revoked", actor=actor, organisation=invitation.organisation, obj=invitation,
                     data={"email": invitation.email, "role": invitation.role, "reason": reason})
    return bool(changed)


# --- group authority ----------------------------------------------------------------------------------------


def group_management_transfer(*, group: AffiliateGroup, organisation: Organisation, actor: str) -> AffiliateGroup:
    """Make ``organisation`` the group's managing organisation: its admins become the group's admins.

    People appointed group admins keep their role; the previous managing organisation's admins lose theirs.
    """
    if organisation.group_id != group.pk:
        raise ValidationError({"organisation": "Must be an organisation of this affiliate group."})
    if organisation.status != Organisation.Status.ACTIVE:
        raise ValidationError({"organisation": f"{organisation.name} is suspended and cannot manage the group."})
    with transaction.atomic():
        locked = AffiliateGroup.objects.select_for_update().get(pk=group.pk)
        previous = locked.managing_organisation_id_resolved()
        if previous != organisation.pk:
            locked.managing_organisation = organisation
            locked.save(update_fields=["managing_organisation"])
            audit_record(action="group.management_transferred", actor=actor, group=locked, obj=locked,
                         data={"from_organisation": previous, "to_organisation": organisation.pk,
                               "to_name": organisation.name})
    return locked


def group_admin_appoint(*, group: AffiliateGroup, username: str, actor: str) -> GroupAdmin:
    """Appoint a member of one of the group's organisations as an admin of the whole group.

    Only members of the group's own organisations can be appointed; anyone else gets the same answer as a
    username that does not exist, so the group's admins learn nothing about other tenants.
    """
    username = username.strip()
    user = (get_user_model().objects.filter(
        username=username, memberships__organisation__group=group,
        memberships__organisation__status=Organisation.Status.ACTIVE).distinct().first() if username else None)
    if user is None:
        raise ValidationError({"username": "No member of this group's organisations has that username."})
    with transaction.atomic():
        role, created = GroupAdmin.objects.get_or_create(group=group, user=user, defaults={"appointed_by": actor})
        if created:
            audit_record(action="group.admin_appointed", actor=actor, group=group, obj=role,
                         data={"username": user.get_username()})
    return role


def group_admin_remove(*, role: GroupAdmin, actor: str) -> None:
    with transaction.atomic():
        audit_record(action="group.admin_removed", actor=actor, group=role.group, obj=role,
                     data={"username": role.user.get_username()})
        role.delete()

"""Reads of the licensing app. Each takes the tenant it reads for; none returns every tenant's rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet

from access.models import AffiliateGroup, GroupAdmin, Invitation, Membership, Organisation
from access.principals import Principal
from licensing.models import BaseModel, Exemption, LicenceAcceptance, LicenceVersion, MetaGrant, Product
from licensing.obligations import Obligations, product_obligations


def products_writable(*, principal: Principal, organisation_ids: list[int]) -> QuerySet[Product]:
    """The products a write may name: those of ``organisation_ids`` (where the caller holds the write scope),
    and only the bound product for a product-bound key (any other id is "does not exist")."""
    products = Product.objects.filter(organisation__in=organisation_ids)
    if principal.bound_product_id:
        products = products.filter(pk=principal.bound_product_id)
    return products


@dataclass(frozen=True)
class AcceptanceState:
    """Whether the catalogue's current licence and AUP texts of a version are accepted, and if not, what to accept.

    An acceptance counts for the texts whose SHA-256 it recorded: once the catalogue pins a new text (a new
    ``licence_sha256`` or ``aup_sha256``), earlier acceptances no longer count for it and it must be accepted
    again. ``licence_required`` and ``aup_required`` say so, naming the hash to accept; they are empty once
    accepted. Where the catalogue holds no AUP hash (a version an admin added without one), the AUP counts as
    accepted by its version name, and ``aup_basis`` says so.
    """

    licence_accepted: bool
    aup_accepted: bool
    last_accepted_at: dt.datetime | None
    licence_required: str = ""
    aup_required: str = ""
    aup_basis: str = "aup_sha256"  # or "aup_version" where the catalogue pins no AUP text


def acceptance_state(*, organisation: Organisation, licence_version: LicenceVersion) -> AcceptanceState:
    """Whether the organisation accepted the catalogue's current text of this licence and of its AUP."""
    records = LicenceAcceptance.objects.filter(organisation=organisation, licence_version=licence_version)
    licence = records.filter(licence_sha256=licence_version.licence_sha256).order_by("-accepted_at").first()
    aup_accepted = records.filter(_current_aup(licence_version)).exists()
    return _state(licence_version, last_licence=licence.accepted_at if licence else None, aup_accepted=aup_accepted,
                  anything_accepted=licence is not None or aup_accepted or records.exists())


def _current_aup(version: LicenceVersion) -> Q:
    """Acceptances of the AUP text the catalogue pins now for ``version``."""
    if not version.aup_sha256:
        return Q(aup_version=version.aup_version)
    return Q(aup_version=version.aup_version, aup_sha256=version.aup_sha256)


def _state(version: LicenceVersion, *, last_licence: dt.datetime | None, aup_accepted: bool,
           anything_accepted: bool) -> AcceptanceState:
    again = " again" if anything_accepted else ""
    licence_required = "" if last_licence else (
        f"The {version.licence_name} text with SHA-256 {version.licence_sha256} must be accepted{again}"
        + (": the catalogue pins a text other than the one accepted before." if anything_accepted else ".")
    )
    aup_required = ""
    if not aup_accepted:
        pinned = f" with SHA-256 {version.aup_sha256}" if version.aup_sha256 else ""
        aup_required = (
            f"The Acceptable Use Policy {version.aup_version}{pinned} must be accepted{again}"
            + (": the catalogue pins a text other than the one accepted before." if anything_accepted else ".")
        )
    return AcceptanceState(
        licence_accepted=last_licence is not None,
        aup_accepted=aup_accepted,
        last_accepted_at=last_licence,
        licence_required=licence_required,
        aup_required=aup_required,
        aup_basis="aup_sha256" if version.aup_sha256 else "aup_version",
    )


def grants_in_force(*, group: AffiliateGroup, on: dt.date, licence_version: LicenceVersion | None = None
                    ) -> QuerySet[MetaGrant]:
    """Grants of the group valid on ``on``.

    A correction (a later record that supersedes a grant) replaces it for every date; a revocation withdraws
    it from its own ``valid_from`` on, so the grant still counts for dates before the withdrawal.
    """
    corrected = MetaGrant.objects.filter(supersedes=OuterRef("pk"), revoked=False)
    withdrawn = MetaGrant.objects.filter(supersedes=OuterRef("pk"), revoked=True, valid_from__lte=on)
    grants = (
        MetaGrant.objects.filter(group=group, revoked=False, valid_from__lte=on)
        .filter(Q(valid_until__isnull=True) | Q(valid_until__gte=on))
        .exclude(Exists(corrected))
        .exclude(Exists(withdrawn))
    )
    if licence_version is not None:
        grants = grants.filter(licence_versions=licence_version)
    return grants.distinct()


NOT_BUILT_ON_LLAMA = (
    "Not built on Llama: no Llama licence obligations (no Notice file, attribution, naming rule or Acceptable Use "
    "Policy). It is still metered and counted: the 700M clause counts the monthly active users of all \"the "
    "products or services made available by or for Licensee, or Licensee's affiliates\" (section 2)."
)


def product_obligations_get(*, product: Product) -> Obligations | None:
    """What the product's licence version obliges it to do; None for a product not built on Llama (it has no
    licence, so no obligations: ``NOT_BUILT_ON_LLAMA`` says so)."""
    if product.licence_version is None:
        return None
    state = acceptance_state(organisation=product.organisation, licence_version=product.licence_version)
    return product_obligations(
        product.licence_version.terms(), licence_accepted=state.licence_accepted, aup_accepted=state.aup_accepted,
        licence_required=state.licence_required, aup_required=state.aup_required,
    )


def acceptance_states(*, organisation_ids: list[int]) -> dict[tuple[int, int], AcceptanceState]:
    """``acceptance_state`` for every (organisation, licence version) the organisations accepted anything
    of, in three queries: for pages that list many products. A pair missing from the answer accepted nothing."""
    accepted = LicenceAcceptance.objects.filter(organisation_id__in=organisation_ids)
    licences = {
        (row["organisation_id"], row["licence_version_id"]): row["last"]
        for row in accepted.filter(licence_sha256=F("licence_version__licence_sha256"))
        .values("organisation_id", "licence_version_id").annotate(last=Max("accepted_at"))
    }
    current_aup = Q(aup_version=F("licence_version__aup_version")) & (
        Q(licence_version__aup_sha256="") | Q(aup_sha256=F("licence_version__aup_sha256")))
    aups = set(accepted.filter(current_aup).values_list("organisation_id", "licence_version_id").distinct())
    pairs = set(accepted.values_list("organisation_id", "licence_version_id").distinct())
    versions = LicenceVersion.objects.in_bulk({version_id for _, version_id in pairs})
    return {
        pair: _state(versions[pair[1]], last_licence=licences.get(pair), aup_accepted=pair in aups,
                     anything_accepted=True)
        for pair in pairs
    }


@dataclass(frozen=True)
class GroupAuthority:
    """Who changes what a whole group is judged by: the managing organisation's admins and appointed admins."""

    managing_organisation: Organisation | None
    appointed: list[GroupAdmin]
    organisations: list[Organisation]
    member_usernames: list[str]  # people who may be appointed: members of the group's active organisations


def group_authority(*, group: AffiliateGroup) -> GroupAuthority:
    organisations = list(group.organisations.order_by("name"))
    managing_id = group.managing_organisation_id_resolved()
    usernames = sorted(set(Membership.objects.filter(
        organisation__group=group, organisation__status=Organisation.Status.ACTIVE
    ).values_list("user__username", flat=True)))
    return GroupAuthority(
        managing_organisation=next((o for o in organisations if o.pk == managing_id), None),
        appointed=list(GroupAdmin.objects.filter(group=group).select_related("user")),
        organisations=organisations,
        member_usernames=usernames,
    )


def organisation_exemption(*, organisation: Organisation) -> Exemption | None:
    """The organisation's clause 1.b.ii exemption in force (it receives Llama only as part of another licensee's
    integrated end user product, so Section 2's 700M clause does not apply to it), or None."""
    return Exemption.objects.filter(organisation=organisation, withdrawn_at__isnull=True).first()


def group_exemptions(*, group: AffiliateGroup) -> dict[int, Exemption]:
    """The exemptions in force in the group, by organisation id: one query for a whole group's evaluation."""
    return {e.organisation_id: e for e in Exemption.objects.filter(organisation__group=group,
                                                                  withdrawn_at__isnull=True)}


def exemption_history(*, organisation: Organisation) -> QuerySet[Exemption]:
    """Every exemption the organisation recorded, newest first, withdrawn ones included."""
    return Exemption.objects.filter(organisation=organisation)


# --- organisations and affiliate groups: what a caller sees -------------------------------------------------
#
# The tenant is the set of organisations a principal belongs to (access/principals.py). Corral staff see
# every organisation: those reads say "unscoped" in their name.


def organisation_list(*, organisation_ids: Iterable[int]) -> QuerySet[Organisation]:
    """The organisations with these ids: pass the caller's (``Principal.organisation_ids``)."""
    return Organisation.objects.filter(pk__in=organisation_ids)


def organisation_list_unscoped() -> QuerySet[Organisation]:
    """Every organisation: for Corral staff only."""
    return Organisation.objects.all()


def organisation_get(*, organisations: QuerySet[Organisation], pk: int) -> Organisation | None:
    """Organisation ``pk`` with its group if it is one of ``organisations`` (the caller's), else None."""
    return organisations.filter(pk=pk).select_related("group").first()


def organisation_list_in_group(*, organisations: QuerySet[Organisation], group: AffiliateGroup
                               ) -> QuerySet[Organisation]:
    """Those of ``organisations`` (the caller's) that belong to the group, by name."""
    return organisations.filter(group=group).order_by("name")


def group_organisation_get(*, group: AffiliateGroup, pk: int) -> Organisation | None:
    """Organisation ``pk`` if it belongs to the group, else None."""
    return group.organisations.filter(pk=pk).first()


def affiliate_group_list(*, organisation_ids: Iterable[int]) -> QuerySet[AffiliateGroup]:
    """The affiliate groups of these organisations (the caller's), each once."""
    return AffiliateGroup.objects.filter(organisations__in=organisation_ids).distinct()


def affiliate_group_list_unscoped() -> QuerySet[AffiliateGroup]:
    """Every affiliate group: for Corral staff only."""
    return AffiliateGroup.objects.all()


def affiliate_group_get(*, groups: QuerySet[AffiliateGroup], pk: int) -> AffiliateGroup | None:
    """Group ``pk`` if it is one of ``groups`` (those the caller sees), else None."""
    return groups.filter(pk=pk).first()


def group_admin_get(*, group: AffiliateGroup, pk: int) -> GroupAdmin | None:
    """The group's appointed admin ``pk`` with the person and group, or None (another group's too)."""
    return GroupAdmin.objects.filter(pk=pk, group=group).select_related("user", "group").first()


# --- products, acceptances, grants ----------------------------------------------------------------------------


def product_list(*, organisations: QuerySet[Organisation] | Iterable[int], built_on_llama: bool | None = None
                 ) -> QuerySet[Product]:
    """Products of these organisations (the caller's), with their organisation, licence version and base
    model, by organisation and name. ``built_on_llama``: only those with (True) or without (False) a licence."""
    products = Product.objects.filter(organisation__in=organisations)
    if built_on_llama is not None:
        products = products.filter(licence_version__isnull=not built_on_llama)
    return products.select_related("organisation", "licence_version", "base_model").order_by("organisation__name",
                                                                                             "name")


def product_get(*, organisations: QuerySet[Organisation], pk: int) -> Product | None:
    """Product ``pk`` if one of ``organisations`` (the caller's) owns it, with what its page shows, else None."""
    return (Product.objects.filter(pk=pk, organisation__in=organisations)
            .select_related("organisation__group", "licence_version", "base_model").first())


def organisation_products(*, organisation: Organisation) -> QuerySet[Product]:
    """The organisation's products with their licence version, by name."""
    return organisation.products.select_related("licence_version").order_by("name")


def licence_acceptance_list(*, organisation: Organisation, licence_version: LicenceVersion, limit: int = 20
                            ) -> list[LicenceAcceptance]:
    """The organisation's latest acceptances of the version's licence, newest first, at most ``limit``."""
    return list(LicenceAcceptance.objects.filter(organisation=organisation, licence_version=licence_version)
                .select_related("product", "accepted_by_user")[:limit])


def meta_grant_list(*, group: AffiliateGroup) -> QuerySet[MetaGrant]:
    """Every grant record of the group (corrections and withdrawals included), newest first."""
    return MetaGrant.objects.filter(group=group).prefetch_related("licence_versions").select_related("supersedes")


# --- the catalogue: shared by every tenant, owned by none -------------------------------------------------------


def catalogue_licence_versions() -> QuerySet[LicenceVersion]:
    """Every Llama licence version of the catalogue, oldest first (the catalogue is public, not a tenant's)."""
    return LicenceVersion.objects.all()


def catalogue_base_models() -> QuerySet[BaseModel]:
    """Every base model of the catalogue with its licence version (public, not a tenant's)."""
    return BaseModel.objects.select_related("licence_version")


# --- members and invitations ----------------------------------------------------------------------------------


def membership_list(*, organisation_ids: Iterable[int]) -> QuerySet[Membership]:
    """The people of these organisations (the caller's) and their roles, by organisation and username."""
    return (Membership.objects.filter(organisation__in=organisation_ids)
            .select_related("user", "organisation").order_by("organisation__name", "user__username"))


def membership_get(*, organisations: QuerySet[Organisation], pk: int) -> Membership | None:
    """Membership ``pk`` if it is in one of ``organisations`` (the caller's), with person and organisation."""
    return Membership.objects.filter(pk=pk, organisation__in=organisations).select_related(
        "user", "organisation").first()


def user_organisations(*, user: Any) -> QuerySet[Organisation]:
    """The organisations the person is a member of."""
    return Organisation.objects.filter(memberships__user=user)


def account_by_username_unscoped(*, username: str) -> Any:
    """The account named ``username`` whoever's it is, or None: for the log-in throttle, which must name the
    account a lockout is about before anyone is signed in."""
    return get_user_model().objects.filter(username=username).first()


def user_role(*, user: Any, organisation_id: int) -> str:
    """The person's role in the organisation, or "" when they are not a member."""
    role = Membership.objects.filter(user=user, organisation_id=organisation_id).values_list(
        "role", flat=True).first()
    return role or ""


def user_roles(*, user: Any, organisations: QuerySet[Organisation]) -> list[str]:
    """The person's roles in those of ``organisations`` they belong to."""
    return list(Membership.objects.filter(user=user, organisation__in=organisations).values_list("role", flat=True))


def invitation_get(*, organisations: QuerySet[Organisation], pk: int) -> Invitation | None:
    """Invitation ``pk`` if it is to one of ``organisations`` (the caller's), with the organisation, else None."""
    return Invitation.objects.filter(pk=pk, organisation__in=organisations).select_related("organisation").first()

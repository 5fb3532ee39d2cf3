"""The licensing reads the portal's pages go through: each answers for the caller's organisations only."""

from __future__ import annotations

from typing import Any

import pytest

from access.models import Invitation, Membership, Organisation
from licensing import selectors
from tests.factories import GroupFactory, MembershipFactory, OrganisationFactory, ProductFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world() -> dict[str, Any]:
    group = GroupFactory(name="Acme Holdings")
    acme = OrganisationFactory(name="Acme Social", group=group)
    cloud = OrganisationFactory(name="Acme Cloud", group=group)
    globex = OrganisationFactory(name="Globex", group=GroupFactory(name="Globex Holdings"))
    return {"group": group, "acme": acme, "cloud": cloud, "globex": globex}


def _mine(world: dict[str, Any]) -> Any:
    return selectors.organisation_list(organisation_ids=[world["acme"].pk, world["cloud"].pk])


def test_it_lists_only_the_callers_organisations_and_their_groups_once(world: dict[str, Any]) -> None:
    assert set(_mine(world)) == {world["acme"], world["cloud"]}
    # Two organisations of one group: the group once, and never Globex's.
    assert list(selectors.affiliate_group_list(organisation_ids=[world["acme"].pk, world["cloud"].pk])) == [
        world["group"]]
    assert set(selectors.affiliate_group_list_unscoped()) == {world["group"], world["globex"].group}


def test_it_finds_an_organisation_group_or_product_of_the_caller_and_none_of_another_tenant(
        world: dict[str, Any]) -> None:
    mine, groups = _mine(world), selectors.affiliate_group_list(organisation_ids=[world["acme"].pk])
    assert selectors.organisation_get(organisations=mine, pk=world["cloud"].pk) == world["cloud"]
    assert selectors.organisation_get(organisations=mine, pk=world["globex"].pk) is None
    assert selectors.affiliate_group_get(groups=groups, pk=world["group"].pk) == world["group"]
    assert selectors.affiliate_group_get(groups=groups, pk=world["globex"].group.pk) is None
    theirs = ProductFactory(organisation=world["globex"])
    ours = ProductFactory(organisation=world["acme"])
    assert selectors.product_get(organisations=mine, pk=ours.pk) == ours
    assert selectors.product_get(organisations=mine, pk=theirs.pk) is None
    assert selectors.group_organisation_get(group=world["group"], pk=world["cloud"].pk) == world["cloud"]
    assert selectors.group_organisation_get(group=world["group"], pk=world["globex"].pk) is None


def test_it_lists_the_callers_products_and_those_built_on_llama(world: dict[str, Any]) -> None:
    chat = ProductFactory(organisation=world["acme"], name="Chat")
    search = ProductFactory(organisation=world["cloud"], name="Search", licence_version=None)
    ProductFactory(organisation=world["globex"], name="Globex Chat")
    assert list(selectors.product_list(organisations=_mine(world))) == [search, chat]  # Acme Cloud, then Social
    assert list(selectors.product_list(organisations=_mine(world), built_on_llama=True)) == [chat]
    assert list(selectors.product_list(organisations=_mine(world), built_on_llama=False)) == [search]


def test_it_lists_the_callers_organisations_in_one_group_by_name(world: dict[str, Any]) -> None:
    everyone = selectors.organisation_list(
        organisation_ids=[world["acme"].pk, world["cloud"].pk, world["globex"].pk])
    assert list(selectors.organisation_list_in_group(organisations=everyone, group=world["group"])) == [
        world["cloud"], world["acme"]]


def test_it_reads_members_roles_and_invitations_of_the_callers_organisations_only(world: dict[str, Any]) -> None:
    owner = MembershipFactory(organisation=world["acme"], role=Membership.Role.OWNER, user__username="zoe")
    viewer = MembershipFactory(organisation=world["cloud"], role=Membership.Role.VIEWER, user=owner.user)
    stranger = MembershipFactory(organisation=world["globex"], role=Membership.Role.OWNER, user__username="al")
    assert list(selectors.membership_list(organisation_ids=[world["acme"].pk, world["cloud"].pk])) == [
        viewer, owner]
    mine = _mine(world)
    assert selectors.membership_get(organisations=mine, pk=owner.pk) == owner
    assert selectors.membership_get(organisations=mine, pk=stranger.pk) is None
    assert selectors.user_role(user=owner.user, organisation_id=world["acme"].pk) == Membership.Role.OWNER
    assert selectors.user_role(user=owner.user, organisation_id=world["globex"].pk) == ""
    assert sorted(selectors.user_roles(user=owner.user, organisations=Organisation.objects.all())) == [
        Membership.Role.OWNER, Membership.Role.VIEWER]
    assert list(selectors.user_organisations(user=stranger.user)) == [world["globex"]]
    invitation = Invitation.objects.create(organisation=world["globex"], email="x@example.com", role="member",
                                           selector="s1", token_hash="h", created_by="user:al",
                                           expires_at="2999-01-01T00:00:00Z")
    assert selectors.invitation_get(organisations=mine, pk=invitation.pk) is None
    assert selectors.invitation_get(organisations=Organisation.objects.filter(pk=world["globex"].pk),
                                    pk=invitation.pk) == invitation

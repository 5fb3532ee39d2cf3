"""Fixtures of the portal tests: one affiliate group with a person of every role, an outsider in another
group, and Corral staff."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from access.models import Membership, Organisation
from tests.factories import GroupFactory, MembershipFactory, OrganisationFactory, ProductFactory, UserFactory

PASSWORD = "correct horse battery staple"


@dataclass
class Tenancy:
    organisation: Organisation
    sibling: Organisation  # another organisation of the same affiliate group
    outsider_org: Organisation
    users: dict[str, Any]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Six people per test: the production hasher's deliberate slowness would cost seconds each time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def tenancy(db: Any) -> Tenancy:
    organisation = OrganisationFactory(name="Acme Social", group=GroupFactory(name="Acme Holdings"))
    sibling = OrganisationFactory(name="Acme Cloud", group=organisation.group)
    outsider_org = OrganisationFactory(name="Globex", group=GroupFactory(name="Globex Holdings"))
    users = {}
    for role in Membership.Role.values:
        users[role] = MembershipFactory(organisation=organisation, role=role, user__username=role).user
    users["outsider"] = MembershipFactory(organisation=outsider_org, role=Membership.Role.OWNER,
                                          user__username="outsider").user
    users["staff"] = UserFactory(username="staff", is_staff=True)
    return Tenancy(organisation, sibling, outsider_org, users)


@pytest.fixture
def login(tenancy: Tenancy) -> Any:
    """A test client signed in as one of the tenancy's people: login("viewer")."""

    def build(who: str) -> Client:
        client = Client()
        client.force_login(tenancy.users[who])
        return client

    return build


@pytest.fixture
def product(tenancy: Tenancy) -> Any:
    return ProductFactory(organisation=tenancy.organisation, name="Acme Chat")

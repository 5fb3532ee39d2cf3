"""factory_boy factories for the models tests build on."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from access.keys import api_key_create
from access.models import AffiliateGroup, Membership, Organisation
from licensing.models import LicenceVersion, Product


class GroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AffiliateGroup

    name = factory.Sequence(lambda n: f"Group {n}")
    slug = factory.Sequence(lambda n: f"group-{n}")


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Organisation {n}")
    slug = factory.Sequence(lambda n: f"organisation-{n}")
    group = factory.SubFactory(GroupFactory)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organisation = factory.SubFactory(OrganisationFactory)
    role = Membership.Role.MEMBER


def licence(slug: str = "llama-3.1") -> LicenceVersion:
    return LicenceVersion.objects.get(slug=slug)


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"Product {n}")
    licence_version = factory.LazyFunction(licence)


def make_key(organisation: Organisation, scopes: list[str], **kwargs: object) -> str:
    """A new API key's full secret."""
    _, full_key = api_key_create(organisation=organisation, name="test", scopes=scopes, created_by="test", **kwargs)
    return full_key

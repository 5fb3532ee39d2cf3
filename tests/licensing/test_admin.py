"""The Django admin of the licensing app: both kinds of product, and the licence's rules on the way in."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from access.models import AuditEvent, Organisation
from governance.models import Alert
from inference.models import Deployment
from licensing.models import BaseModel, Product
from tests.factories import OrganisationFactory, ProductFactory, UserFactory, licence

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def product_form(organisation: Organisation, **fields: Any) -> dict[str, Any]:
    data = {"organisation": organisation.pk, "name": "Vision", "description": "", "licence_version": "",
            "base_model": "", "launch_date": "", "status": "development"}
    data.update(fields)
    return data


def test_it_lists_both_kinds_of_product_and_filters_them(staff: Client) -> None:
    organisation = OrganisationFactory()
    ProductFactory(organisation=organisation, name="Chat", licence_version=licence("llama-3.1"))
    ProductFactory(organisation=organisation, name="Search", licence_version=None)

    everything = staff.get("/admin/licensing/product/").content.decode()
    not_llama = staff.get("/admin/licensing/product/?built_on_llama=no").content.decode()

    assert "Chat" in everything and "Search" in everything and "Not built on Llama" in everything
    assert "Search" in not_llama and ">Chat<" not in not_llama


def test_it_applies_the_eu_clause_to_products_added_here(staff: Client) -> None:
    """Llama 3.2 AUP: the rights to "any multimodal models included in Llama 3.2 ... are not being granted to you if
    you are ... a company with a principal place of business in, the European Union"."""
    eu_org = OrganisationFactory(eu_domiciled=True)
    vision = BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct")

    refused = staff.post("/admin/licensing/product/add/", product_form(
        eu_org, licence_version=licence("llama-3.2").pk, base_model=vision.pk))
    not_llama = staff.post("/admin/licensing/product/add/", product_form(eu_org, name="Search"))

    assert refused.status_code == 200
    assert "multimodal models included in Llama 3.2" in str(refused.context["adminform"].form.errors["base_model"])
    assert not_llama.status_code == 302
    assert list(Product.objects.values_list("name", "licence_version")) == [("Search", None)]


def test_a_change_of_domicile_here_goes_through_the_service_and_drains(staff: Client, monkeypatch: Any) -> None:
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    organisation = OrganisationFactory(name="Acme")
    version = licence("llama-4")
    product = ProductFactory(organisation=organisation, licence_version=version)
    deployment = Deployment.objects.create(
        organisation=organisation, product=product, licence_version=version, model_source="x/y",
        base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-4-Scout-17B-16E-Instruct"),
        served_model_name="scout", created_by="test")

    response = staff.post(f"/admin/access/organisation/{organisation.pk}/change/", {
        "name": "Acme", "slug": organisation.slug, "group": organisation.group_id, "status": "active",
        "eu_domiciled": "on",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "exemptions-TOTAL_FORMS": "0", "exemptions-INITIAL_FORMS": "0"}, follow=True)

    assert response.status_code == 200
    assert "Drained 1 deployment(s)" in response.content.decode()
    organisation.refresh_from_db()
    deployment.refresh_from_db()
    assert organisation.eu_domiciled and deployment.deleted
    assert AuditEvent.objects.filter(action="organisation.domicile_changed").count() == 1
    assert Alert.objects.filter(level="eu_multimodal", licence_version=version).count() == 1

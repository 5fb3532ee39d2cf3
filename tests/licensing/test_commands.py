"""Operator commands: create_organisation, create_api_key and load_demo."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from pytest_django.fixtures import SettingsWrapper

from access.keys import api_key_authenticate
from access.models import AffiliateGroup, ApiKey, AuditEvent, Membership, Organisation
from licensing.models import LicenceAcceptance, Product
from tests.factories import GroupFactory, OrganisationFactory, ProductFactory

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# create_organisation


def test_it_creates_an_organisation_in_a_new_group() -> None:
    output = run("create_organisation", "Foo", "--group", "Bar")

    organisation = Organisation.objects.get(name="Foo")
    assert organisation.group.name == "Bar"
    assert organisation.eu_domiciled is False
    assert f"Created organisation 'Foo' (id {organisation.pk}) in group 'Bar'" in output
    assert AuditEvent.objects.filter(action="organisation.created", actor="cli", organisation=organisation).exists()


def test_it_creates_an_eu_organisation_in_an_existing_group() -> None:
    group = GroupFactory(name="Bar")

    run("create_organisation", "Foo", "--group", "Bar", "--eu")

    organisation = Organisation.objects.get(name="Foo")
    assert organisation.group == group
    assert organisation.eu_domiciled is True
    assert AffiliateGroup.objects.filter(name="Bar").count() == 1


def test_it_refuses_a_duplicate_organisation_with_a_command_error_naming_the_field() -> None:
    OrganisationFactory(name="Foo")

    with pytest.raises(CommandError, match=r"^name: An organisation named 'Foo' already exists\."):
        run("create_organisation", "Foo", "--group", "Bar")

    assert Organisation.objects.filter(name="Foo").count() == 1


# create_api_key


def test_it_prints_a_working_key_alone_on_the_last_line() -> None:
    organisation = OrganisationFactory()

    output = run("create_api_key", organisation.slug, "--scopes", "read, ingest", "--name", "ingest bot")

    key = output.rstrip("\n").splitlines()[-1]
    api_key = api_key_authenticate(key)
    assert api_key.organisation == organisation
    assert (api_key.name, api_key.scopes) == ("ingest bot", ["read", "ingest"])
    assert key.startswith(api_key.prefix + ".")
    assert api_key.prefix in output.splitlines()[0]
    assert key not in output.splitlines()[0]


@pytest.mark.parametrize("how", ["name", "id"])
def test_it_finds_the_organisation_by_name_or_id(how: str) -> None:
    organisation = OrganisationFactory(name="Acme Social")
    ident = organisation.name if how == "name" else str(organisation.pk)

    key = run("create_api_key", ident, "--scopes", "read").splitlines()[-1]

    assert api_key_authenticate(key).organisation == organisation


def test_it_binds_a_key_to_a_product_and_an_expiry() -> None:
    product = ProductFactory()

    key = run(
        "create_api_key", product.organisation.slug, "--scopes", "inference", "--product", str(product.pk),
        "--expires-in-days", "30",
    ).splitlines()[-1]

    api_key = api_key_authenticate(key)
    assert api_key.product == product
    assert api_key.expires_at is not None


def test_it_refuses_an_unknown_organisation() -> None:
    with pytest.raises(CommandError, match="No organisation named 'nobody'"):
        run("create_api_key", "nobody", "--scopes", "read")

    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("scopes", ["read,superuser", "", " , "])
def test_it_refuses_bad_scopes(scopes: str) -> None:
    organisation = OrganisationFactory()

    with pytest.raises(CommandError, match="scope"):
        run("create_api_key", organisation.slug, "--scopes", scopes)

    assert not ApiKey.objects.exists()


def test_it_refuses_another_organisations_product() -> None:
    organisation = OrganisationFactory()
    foreign_product = ProductFactory()

    with pytest.raises(CommandError, match="has no product"):
        run("create_api_key", organisation.slug, "--scopes", "read", "--product", str(foreign_product.pk))

    assert not ApiKey.objects.exists()


def test_it_refuses_an_expiry_of_less_than_a_day() -> None:
    organisation = OrganisationFactory()

    with pytest.raises(CommandError, match="at least 1"):
        run("create_api_key", organisation.slug, "--scopes", "read", "--expires-in-days", "0")

    assert not ApiKey.objects.exists()


# load_demo


@pytest.fixture
def demo_var_dir(settings: SettingsWrapper, tmp_path: Path) -> Path:
    settings.VAR_DIR = tmp_path  # the demo password file goes here, not in var/
    return tmp_path


def demo_counts() -> dict[str, int]:
    return {
        "groups": AffiliateGroup.objects.count(),
        "organisations": Organisation.objects.count(),
        "products": Product.objects.count(),
        "acceptances": LicenceAcceptance.objects.count(),
        "users": get_user_model().objects.count(),
        "memberships": Membership.objects.count(),
        "audit events": AuditEvent.objects.count(),
    }


def test_it_loads_the_demo_once_however_often_it_runs(demo_var_dir: Path) -> None:
    first_output = run("load_demo")
    after_first = demo_counts()
    second_output = run("load_demo")

    assert demo_counts() == after_first
    assert after_first["organisations"] == 2
    assert after_first["products"] == 5
    assert after_first["acceptances"] == 3  # one per live product built on Llama
    assert after_first["memberships"] == 2
    assert first_output == second_output


def test_it_prints_an_admin_login_that_works(demo_var_dir: Path) -> None:
    output = run("load_demo")

    username, password = output.strip().rsplit("admin login: ", 1)[1].split(" / ")
    admin = get_user_model().objects.get(username=username)
    assert admin.check_password(password)
    assert admin.is_superuser
    assert set(Membership.objects.filter(user=admin).values_list("organisation__name", "role")) == {
        ("Acme Social", "owner"),
        ("Acme Cloud", "owner"),
    }
    assert (demo_var_dir / "demo-admin-password").read_text().strip() == password

"""The catalogue the data migration loads, and `load_catalogue`, which adds what is missing and edits nothing."""

from __future__ import annotations

import datetime as dt
import json
import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from licensing.models import BaseModel, LicenceVersion
from licensing.obligations import check_derived_model_name
from licensing.selectors import product_obligations_get
from licensing.services import licence_accept
from tests.factories import OrganisationFactory, ProductFactory

pytestmark = pytest.mark.django_db

CATALOGUE_JSON = Path(__file__).resolve().parents[2] / "licensing" / "data" / "catalogue.json"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def load_catalogue() -> str:
    out = StringIO()
    call_command("load_catalogue", stdout=out)
    return out.getvalue()


def test_it_loads_the_seven_versions_with_their_release_dates_and_test_months() -> None:
    loaded = {
        version.slug: (version.name, version.release_date, version.test_month())
        for version in LicenceVersion.objects.all()
    }

    assert loaded == {
        "llama-2": ("Llama 2", dt.date(2023, 7, 18), dt.date(2023, 6, 1)),
        "code-llama": ("Code Llama", dt.date(2023, 8, 24), dt.date(2023, 7, 1)),
        "llama-3": ("Llama 3", dt.date(2024, 4, 18), dt.date(2024, 3, 1)),
        "llama-3.1": ("Llama 3.1", dt.date(2024, 7, 23), dt.date(2024, 6, 1)),
        "llama-3.2": ("Llama 3.2", dt.date(2024, 9, 25), dt.date(2024, 8, 1)),
        "llama-3.3": ("Llama 3.3", dt.date(2024, 12, 6), dt.date(2024, 11, 1)),
        "llama-4": ("Llama 4", dt.date(2025, 4, 5), dt.date(2025, 3, 1)),
    }


def test_it_flags_only_code_llama_as_having_an_ambiguous_test_date() -> None:
    ambiguous = LicenceVersion.objects.filter(date_ambiguous=True)

    assert [version.slug for version in ambiguous] == ["code-llama"]
    assert ambiguous.get().date_note  # counsel is told why


def test_it_keeps_the_label_llama_4_gives_its_date() -> None:
    assert LicenceVersion.objects.get(slug="llama-4").release_date_label == "Version Effective Date"
    assert LicenceVersion.objects.get(slug="llama-3.1").release_date_label == "Version Release Date"


def test_it_sets_the_700m_threshold_on_every_version() -> None:
    assert set(LicenceVersion.objects.values_list("mau_threshold", flat=True)) == {700_000_000}


def test_it_pins_every_licence_and_aup_text_by_a_sha256() -> None:
    for version in LicenceVersion.objects.all():
        assert SHA256.match(version.licence_sha256), version.slug
        assert SHA256.match(version.aup_sha256), version.slug


@pytest.mark.parametrize("slug", ["llama-2", "code-llama", "llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4"])
def test_it_ships_each_version_in_a_state_an_admin_can_save_unchanged(slug: str) -> None:
    # The admin form runs the model's validators: a shipped row that fails them cannot be edited there.
    LicenceVersion.objects.get(slug=slug).full_clean()


def test_it_pins_code_llama_to_the_llama_2_licence_text() -> None:
    llama_2 = LicenceVersion.objects.get(slug="llama-2")
    code_llama = LicenceVersion.objects.get(slug="code-llama")

    assert code_llama.licence_sha256 == llama_2.licence_sha256
    assert code_llama.aup_version == llama_2.aup_version == "llama-2"
    assert len(set(LicenceVersion.objects.values_list("licence_sha256", flat=True))) == 6


def test_it_links_every_shipped_base_model_to_its_version() -> None:
    shipped = {
        base["repo_id"]: (entry["slug"], base["multimodal"])
        for entry in json.loads(CATALOGUE_JSON.read_text(encoding="utf-8"))["versions"]
        for base in entry["base_models"]
    }
    loaded = {
        base.repo_id: (base.licence_version.slug, base.multimodal)
        for base in BaseModel.objects.select_related("licence_version")
    }

    assert loaded == shipped
    assert BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct").multimodal is True
    assert BaseModel.objects.get(repo_id="meta-llama/Llama-3.1-8B-Instruct").licence_version.slug == "llama-3.1"


def test_it_loads_nothing_twice() -> None:
    versions, base_models = LicenceVersion.objects.count(), BaseModel.objects.count()

    first = load_catalogue()
    second = load_catalogue()

    assert "0 new version(s), 7 in all" in first
    assert "0 new version(s), 7 in all" in second
    assert (LicenceVersion.objects.count(), BaseModel.objects.count()) == (versions, base_models) == (7, 28)


def test_it_never_overwrites_an_admins_edit() -> None:
    version = LicenceVersion.objects.get(slug="llama-3.1")
    version.notice_line = "Edited by counsel."
    version.release_date = dt.date(2024, 7, 24)
    version.save()
    base = BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-1B")
    base.multimodal = True
    base.save()

    load_catalogue()

    version.refresh_from_db()
    base.refresh_from_db()
    assert version.notice_line == "Edited by counsel."
    assert version.release_date == dt.date(2024, 7, 24)
    assert base.multimodal is True


def test_it_restores_a_shipped_version_that_is_missing() -> None:
    BaseModel.objects.filter(licence_version__slug="llama-3.3").delete()
    LicenceVersion.objects.filter(slug="llama-3.3").delete()

    output = load_catalogue()

    restored = LicenceVersion.objects.get(slug="llama-3.3")
    assert "1 new version(s), 7 in all" in output
    assert restored.release_date == dt.date(2024, 12, 6)
    assert list(restored.base_models.values_list("repo_id", flat=True)) == ["meta-llama/Llama-3.3-70B-Instruct"]


def test_it_survives_an_admin_renaming_a_shipped_versions_slug() -> None:
    # The admin lets anyone edit a slug; the next load must neither crash nor duplicate the version.
    LicenceVersion.objects.filter(slug="llama-3.1").update(slug="llama-3-1")

    load_catalogue()

    assert LicenceVersion.objects.filter(name="Llama 3.1").count() == 1
    assert LicenceVersion.objects.filter(slug="llama-3-1").exists()


def new_version(**overrides: object) -> LicenceVersion:
    """A version an admin adds before the catalogue ships it."""
    fields: dict[str, object] = {
        "slug": "llama-5",
        "name": "Llama 5",
        "licence_name": "Llama 5 Community License",
        "release_date": dt.date(2026, 2, 10),
        "notice_line": "Llama 5 is licensed under the Llama 5 Community License, Copyright © Meta Platforms, Inc.",
        "attribution_display": "Built with Llama",
        "derived_name_prefix": "Llama",
        "outputs_may_improve_other_models": True,
        "eu_multimodal_restriction": True,
        "licence_url": "https://example.com/llama5/LICENSE",
        "licence_sha256": "a" * 64,
        "aup_version": "llama-5",
        "aup_url": "https://example.com/llama5/use-policy",
    }
    fields.update(overrides)
    return LicenceVersion.objects.create(**fields)


def test_it_gives_a_version_added_by_an_admin_its_obligations() -> None:
    version = new_version()
    organisation = OrganisationFactory()
    product = ProductFactory(organisation=organisation, licence_version=version)

    before = product_obligations_get(product=product)
    licence_accept(
        organisation=organisation, licence_version=version, licence_sha256="a" * 64, aup_version="llama-5",
        accepted_by="counsel@example.com", product=product,
    )
    after = product_obligations_get(product=product)

    assert version.test_month() == dt.date(2026, 1, 1)
    assert before.version == "Llama 5"
    assert before.notice_text == (
        "Llama 5 is licensed under the Llama 5 Community License, Copyright © Meta Platforms, Inc.\n"
    )
    assert before.attribution_display == "Built with Llama"
    assert before.eu_multimodal_restriction is True
    assert (before.licence_accepted, before.aup_accepted) == (False, False)
    assert (after.licence_accepted, after.aup_accepted) == (True, True)
    assert check_derived_model_name(version.terms(), "Llama-Foo").ok is True
    assert check_derived_model_name(version.terms(), "Foo").ok is False


def test_it_leaves_a_version_added_by_an_admin_in_place_when_loading() -> None:
    new_version()

    output = load_catalogue()

    assert "0 new version(s), 8 in all" in output
    assert LicenceVersion.objects.filter(slug="llama-5").exists()

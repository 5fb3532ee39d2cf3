"""The catalogue the data migrations load, and `load_catalogue`: what is missing is added, what differs from the
shipped file is corrected with an audit entry per row, and rows the file does not ship are left alone."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import call_command

from access.audit import audit_record, audit_verify
from access.models import AuditEvent
from licensing.models import BaseModel, LicenceAcceptance, LicenceVersion
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


def catalogue_events(action: str = "catalogue.updated") -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_it_loads_nothing_twice_and_writes_nothing_for_rows_that_match() -> None:
    versions, base_models = LicenceVersion.objects.count(), BaseModel.objects.count()

    first = load_catalogue()
    second = load_catalogue()

    assert "0 created, 0 updated; 7 version(s) and 44 base model(s) in all" in first
    assert "0 created, 0 updated; 7 version(s) and 44 base model(s) in all" in second
    assert (LicenceVersion.objects.count(), BaseModel.objects.count()) == (versions, base_models) == (7, 44)
    assert not AuditEvent.objects.exists()


def test_it_corrects_a_shipped_row_that_differs_and_audits_each_field_with_old_and_new_value() -> None:
    version = LicenceVersion.objects.get(slug="llama-3.1")
    version.notice_line = "Edited by hand."
    version.release_date = dt.date(2024, 7, 24)
    version.save()
    base = BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-1B")
    base.multimodal = True
    base.save()
    untouched = BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-3B")

    output = load_catalogue()

    version.refresh_from_db()
    base.refresh_from_db()
    assert version.notice_line.startswith("Llama 3.1 is licensed under the Llama 3.1 Community License")
    assert version.release_date == dt.date(2024, 7, 23)
    assert base.multimodal is False
    version_event, base_event = catalogue_events()
    assert (version_event.actor, version_event.object_type, version_event.object_id) == (
        "catalogue", "LicenceVersion", str(version.pk))
    assert version_event.data == {"slug": "llama-3.1", "changes": {
        "notice_line": {"old": "Edited by hand.", "new": version.notice_line},
        "release_date": {"old": "2024-07-24", "new": "2024-07-23"},
    }}
    assert (base_event.object_type, base_event.object_id) == ("BaseModel", str(base.pk))
    assert base_event.data == {"repo_id": "meta-llama/Llama-3.2-1B",
                               "changes": {"multimodal": {"old": True, "new": False}}}
    assert not AuditEvent.objects.filter(object_type="BaseModel", object_id=str(untouched.pk)).exists()
    assert "0 created, 2 updated" in output
    assert "updated LicenceVersion llama-3.1 (notice_line: 'Edited by hand.' -> " in output
    assert audit_verify().ok


def test_it_restores_a_shipped_version_that_is_missing() -> None:
    BaseModel.objects.filter(licence_version__slug="llama-3.3").delete()
    LicenceVersion.objects.filter(slug="llama-3.3").delete()

    output = load_catalogue()

    restored = LicenceVersion.objects.get(slug="llama-3.3")
    assert "2 created, 0 updated; 7 version(s)" in output
    assert restored.release_date == dt.date(2024, 12, 6)
    assert list(restored.base_models.values_list("repo_id", flat=True)) == ["meta-llama/Llama-3.3-70B-Instruct"]
    created = catalogue_events("catalogue.created")
    assert [(event.object_type, event.actor) for event in created] == [
        ("LicenceVersion", "catalogue"), ("BaseModel", "catalogue")]
    assert created[0].data["changes"]["release_date"] == {"old": None, "new": "2024-12-06"}
    assert created[1].data["changes"]["licence_version"] == {"old": None, "new": "llama-3.3"}


def test_it_survives_an_admin_renaming_a_shipped_versions_slug() -> None:
    # The admin lets anyone edit a slug; the next load must neither crash nor duplicate the version.
    LicenceVersion.objects.filter(slug="llama-3.1").update(slug="llama-3-1")

    load_catalogue()

    assert LicenceVersion.objects.filter(name="Llama 3.1").count() == 1
    assert LicenceVersion.objects.filter(slug="llama-3-1").exists()
    assert not AuditEvent.objects.exists()  # the slug is the admin's; every field the file ships matches


# --- the base models added, with their licence versions, flags and dates ---------------------------------------


@pytest.mark.parametrize(
    ("repo_id", "slug", "multimodal"),
    [
        ("meta-llama/Llama-Guard-3-8B", "llama-3.1", False),
        ("meta-llama/Llama-Guard-3-1B", "llama-3.2", False),
        ("meta-llama/Llama-Guard-3-11B-Vision", "llama-3.2", True),
        ("meta-llama/Llama-Guard-4-12B", "llama-4", True),
        ("meta-llama/Llama-3.2-3B", "llama-3.2", False),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama-3.2", False),
        ("meta-llama/Llama-3.2-90B-Vision", "llama-3.2", True),
        ("meta-llama/Llama-3.2-90B-Vision-Instruct", "llama-3.2", True),
        ("meta-llama/Llama-4-Maverick-17B-128E", "llama-4", True),
        ("meta-llama/CodeLlama-13b-hf", "code-llama", False),
        ("meta-llama/CodeLlama-13b-Python-hf", "code-llama", False),
        ("meta-llama/CodeLlama-34b-hf", "code-llama", False),
        ("meta-llama/CodeLlama-34b-Python-hf", "code-llama", False),
        ("meta-llama/CodeLlama-7b-Python-hf", "code-llama", False),
        ("meta-llama/CodeLlama-70b-Python-hf", "code-llama", False),
    ],
)
def test_it_ships_each_added_base_model_under_the_version_meta_released_it_with(
    repo_id: str, slug: str, multimodal: bool
) -> None:
    """The Llama 3.2 AUP (and the 3.3 and 4 AUPs in the same words): "With respect to any multimodal models
    included in Llama 3.2, the rights granted under Section 1(a) of the Llama 3.2 Community License Agreement
    are not being granted to you if you are an individual domiciled in, or a company with a principal place of
    business in, the European Union." The EU gate needs each model's version and multimodal flag right.

    Hand-computed from Meta's releases: Llama Guard 3 8B is a Llama 3.1 model, Guard 3 1B and 11B-Vision are
    Llama 3.2, Guard 4 12B and Maverick are Llama 4; the Vision, Guard 3 11B, Guard 4 and Llama 4 models take
    images.
    """
    base = BaseModel.objects.select_related("licence_version").get(repo_id=repo_id)

    assert (base.licence_version.slug, base.multimodal) == (slug, multimodal)


def test_it_says_why_llama_guard_3_8b_is_filed_under_llama_3_1() -> None:
    """Meta's sources differ (released with the 3.1 AUP; PurpleLlama later put the 3.2 texts beside it): Corral
    does not pick silently, it shows the reading."""
    note = BaseModel.objects.get(repo_id="meta-llama/Llama-Guard-3-8B").licence_note

    assert "Llama 3.1" in note and "Llama 3.2" in note and "as released" in note


@pytest.mark.parametrize(
    "repo_id",
    ["meta-llama/CodeLlama-70b-hf", "meta-llama/CodeLlama-70b-Python-hf", "meta-llama/CodeLlama-70b-Instruct-hf"],
)
def test_it_gives_code_llama_70b_its_own_release_date_and_test_month(repo_id: str) -> None:
    """The Llama 2 text Code Llama ships under, section 2: "If, on the Llama 2 version release date, the monthly
    active users ... is greater than 700 million monthly active users in the preceding calendar month".

    Hand-computed: the text names 18 July 2023 (so June 2023); Code Llama 70B came on 29 January 2024
    (meta-llama/codellama commit 1af62e1, "Updates for 70b release"), whose preceding calendar month is
    December 2023. Corral keeps the version's date and records the model's own, with a note saying why.
    """
    base = BaseModel.objects.select_related("licence_version").get(repo_id=repo_id)

    assert base.release_date == dt.date(2024, 1, 29)
    assert base.test_month() == dt.date(2023, 12, 1)
    assert base.licence_version.test_month() == dt.date(2023, 7, 1)
    assert "Llama 2 version release date" in base.date_note and "December 2023" in base.date_note


def test_it_gives_no_own_date_to_code_llama_models_released_with_the_version() -> None:
    dated = BaseModel.objects.filter(licence_version__slug="code-llama", release_date__isnull=False)

    assert sorted(dated.values_list("repo_id", flat=True)) == [
        "meta-llama/CodeLlama-70b-Instruct-hf", "meta-llama/CodeLlama-70b-Python-hf", "meta-llama/CodeLlama-70b-hf"]


def test_it_notes_that_llama_guard_4s_own_date_tests_the_same_month() -> None:
    base = BaseModel.objects.select_related("licence_version").get(repo_id="meta-llama/Llama-Guard-4-12B")

    assert base.release_date == dt.date(2025, 4, 29)
    assert base.test_month() == base.licence_version.test_month() == dt.date(2025, 3, 1)


@pytest.mark.parametrize(
    ("slug", "covers_outputs"),
    [("llama-2", False), ("code-llama", False), ("llama-3", False), ("llama-3.1", True), ("llama-3.2", True),
     ("llama-3.3", True), ("llama-4", True)],
)
def test_it_ships_the_reach_of_each_versions_naming_rule(slug: str, covers_outputs: bool) -> None:
    assert LicenceVersion.objects.get(slug=slug).derived_name_covers_outputs is covers_outputs


# --- a database deployed before these corrections ---------------------------------------------------------


def migration(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"licensing.migrations.{name}")


def as_deployed_before_the_corrections() -> None:
    """The catalogue as 0002 to 0006 left a database: the new fields at their defaults, the new models absent."""
    added = [
        "meta-llama/Llama-Guard-3-8B", "meta-llama/Llama-Guard-4-12B", "meta-llama/Llama-4-Maverick-17B-128E",
        "meta-llama/Llama-3.2-3B",
    ]
    BaseModel.objects.filter(repo_id__in=added).delete()
    BaseModel.objects.update(release_date=None, date_note="", licence_note="")
    LicenceVersion.objects.update(derived_name_covers_outputs=False)


def test_the_corrections_migration_brings_a_deployed_database_up_to_date_with_an_audit_trail() -> None:
    """Hand-computed for a database that already recorded something: Code Llama 70B gains its date and note
    (old values None and ""), the four 3.1+ versions their naming reach (False -> True), the four missing base
    models are created, and every entry is by "catalogue"."""
    audit_record(action="organisation.created", actor="cli", data={"name": "Acme"})  # the database has history
    as_deployed_before_the_corrections()

    migration("0007_catalogue_corrections").apply_catalogue(apps, None)

    code_llama_70b = BaseModel.objects.get(repo_id="meta-llama/CodeLlama-70b-hf")
    assert code_llama_70b.release_date == dt.date(2024, 1, 29)
    [event] = AuditEvent.objects.filter(action="catalogue.updated", object_type="BaseModel",
                                        object_id=str(code_llama_70b.pk))
    assert event.actor == "catalogue"
    assert event.data["changes"]["release_date"] == {"old": None, "new": "2024-01-29"}
    assert event.data["changes"]["date_note"]["old"] == ""
    naming = AuditEvent.objects.filter(action="catalogue.updated", object_type="LicenceVersion")
    assert sorted(e.data["slug"] for e in naming) == ["llama-3.1", "llama-3.2", "llama-3.3", "llama-4"]
    assert all(e.data["changes"] == {"derived_name_covers_outputs": {"old": False, "new": True}} for e in naming)
    assert sorted(e.data["repo_id"] for e in catalogue_events("catalogue.created")) == [
        "meta-llama/Llama-3.2-3B", "meta-llama/Llama-4-Maverick-17B-128E", "meta-llama/Llama-Guard-3-8B",
        "meta-llama/Llama-Guard-4-12B"]
    assert audit_verify().ok
    migration("0007_catalogue_corrections").apply_catalogue(apps, None)  # run twice: nothing more to record
    # 4 versions' naming reach, the 3 Code Llama 70B models' dates, the 4 models created: and nothing more.
    assert AuditEvent.objects.filter(actor="catalogue").count() == 4 + 3 + 4


def test_the_corrections_migration_writes_no_entries_on_a_database_with_no_history() -> None:
    as_deployed_before_the_corrections()

    migration("0007_catalogue_corrections").apply_catalogue(apps, None)

    assert BaseModel.objects.get(repo_id="meta-llama/CodeLlama-70b-hf").release_date == dt.date(2024, 1, 29)
    assert BaseModel.objects.filter(repo_id="meta-llama/Llama-Guard-4-12B").exists()
    assert not AuditEvent.objects.exists()


def test_it_fills_the_aup_hash_of_earlier_acceptances_only_where_the_aup_version_matches() -> None:
    """Reading of 0006: an acceptance that recorded aup_version llama-3.1 accepted the text the catalogue pins
    for llama-3.1; one that recorded another AUP version gets no hash, and no AUP acceptance, as before."""
    version = LicenceVersion.objects.get(slug="llama-3.1")
    organisation = OrganisationFactory()
    common = {"organisation": organisation, "licence_version": version, "accepted_by": "t",
              "licence_sha256": version.licence_sha256}
    matching = LicenceAcceptance.objects.create(aup_version="llama-3.1", **common)
    other = LicenceAcceptance.objects.create(aup_version="llama-3", **common)
    pinned = LicenceAcceptance.objects.create(aup_version="llama-3.1", aup_sha256="d" * 64, **common)

    migration("0006_aup_sha256_and_catalogue_fields").fill_aup_sha256(apps, None)

    filled = {a.pk: a.aup_sha256 for a in LicenceAcceptance.objects.filter(organisation=organisation)}
    assert filled == {matching.pk: version.aup_sha256, other.pk: "", pinned.pk: "d" * 64}


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


def test_it_leaves_rows_an_admin_added_alone_when_loading() -> None:
    version = new_version()
    local = BaseModel.objects.create(repo_id="acme/Llama-3.1-8B-Acme", licence_version=licence_row("llama-3.1"),
                                     multimodal=True, date_note="Our own fine-tune.")

    output = load_catalogue()

    assert "0 created, 0 updated; 8 version(s) and 45 base model(s) in all" in output
    version_after = LicenceVersion.objects.get(slug="llama-5")
    local.refresh_from_db()
    assert (version_after.aup_sha256, version_after.updated_at) == ("", version.updated_at)
    assert (local.multimodal, local.date_note) == (True, "Our own fine-tune.")
    assert not AuditEvent.objects.exists()


def licence_row(slug: str) -> LicenceVersion:
    return LicenceVersion.objects.get(slug=slug)

"""Licensing writes (organisations, products, acceptances, grants), the selectors over them, and their audit trail."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from access.models import AffiliateGroup, AuditEvent, Organisation
from licensing.models import BaseModel, Exemption, LicenceAcceptance, LicenceVersion, MetaGrant, Product
from licensing.selectors import (
    acceptance_state,
    acceptance_states,
    grants_in_force,
    group_exemptions,
    organisation_exemption,
    product_obligations_get,
)
from licensing.services import (
    exemption_record,
    exemption_withdraw,
    grant_record,
    licence_accept,
    organisation_create,
    organisation_domicile_set,
    product_create,
    product_delete,
    product_update,
)
from tests.factories import GroupFactory, OrganisationFactory, ProductFactory, licence

pytestmark = pytest.mark.django_db

ACTOR = "alice@example.com"


def audit_events(action: str, obj: object) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, object_id=str(obj.pk)))  # type: ignore[attr-defined]


def base_model(repo_id: str) -> BaseModel:
    return BaseModel.objects.get(repo_id=repo_id)


def accept(organisation: Organisation, slug: str = "llama-3.1", product: Product | None = None) -> LicenceAcceptance:
    version = licence(slug)
    return licence_accept(
        organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
        aup_version=version.aup_version, accepted_by=ACTOR, product=product,
    )


def grant(group: AffiliateGroup, **overrides: object) -> MetaGrant:
    fields: dict[str, object] = {
        "group": group,
        "licence_versions": [licence("llama-3.1")],
        "reference": "META-2024-001",
        "granted_on": dt.date(2024, 8, 1),
        "valid_from": dt.date(2024, 8, 1),
        "valid_until": dt.date(2025, 7, 31),
        "recorded_by": ACTOR,
    }
    fields.update(overrides)
    return grant_record(**fields)  # type: ignore[arg-type]


AUP_3_1_SHA256 = "f456a3f5b15ab588c84d06cf095a245bfee0bbc1620b48ed00af2cca4a711735"  # models/llama3_1/USE_POLICY.md


def catalogue_row_update(version: LicenceVersion, **fields: object) -> None:
    """Change a catalogue row as an admin or a catalogue load would, and keep ``version`` in step."""
    LicenceVersion.objects.filter(pk=version.pk).update(**fields)
    version.refresh_from_db()


def error_fields(excinfo: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return set(excinfo.value.message_dict)


# organisation_create


def test_it_creates_an_organisation_and_its_missing_group() -> None:
    organisation = organisation_create(name="Acme Social", group_name="Acme Holdings", actor=ACTOR, eu_domiciled=True)

    organisation.refresh_from_db()
    assert organisation.name == "Acme Social"
    assert organisation.slug == "acme-social"
    assert organisation.group.name == "Acme Holdings"
    assert organisation.eu_domiciled is True
    assert organisation.status == Organisation.Status.ACTIVE
    assert AffiliateGroup.objects.filter(name="Acme Holdings").count() == 1


def test_it_puts_a_new_organisation_in_an_existing_group() -> None:
    group = GroupFactory(name="Acme Holdings")
    groups = AffiliateGroup.objects.count()

    organisation = organisation_create(name="Acme Cloud", group_name=" Acme Holdings ", actor=ACTOR)

    assert organisation.group == group
    assert AffiliateGroup.objects.count() == groups


def test_it_names_the_group_after_the_organisation_when_none_is_given() -> None:
    organisation = organisation_create(name="Solo Ltd", group_name="  ", actor=ACTOR)

    assert organisation.group.name == "Solo Ltd"


def test_it_refuses_a_duplicate_organisation_name() -> None:
    organisation_create(name="Acme", group_name="G", actor=ACTOR)

    with pytest.raises(ValidationError) as excinfo:
        organisation_create(name=" Acme ", group_name="Other", actor=ACTOR)

    assert error_fields(excinfo) == {"name"}
    assert Organisation.objects.filter(name="Acme").count() == 1
    assert not AffiliateGroup.objects.filter(name="Other").exists()


@pytest.mark.parametrize("name", ["", "   "])
def test_it_refuses_a_blank_organisation_name(name: str) -> None:
    organisations = Organisation.objects.count()

    with pytest.raises(ValidationError) as excinfo:
        organisation_create(name=name, group_name="G", actor=ACTOR)

    assert error_fields(excinfo) == {"name"}
    assert Organisation.objects.count() == organisations


def test_it_refuses_an_organisation_name_longer_than_its_column() -> None:
    # Organisation.name is max_length=200: a longer name must be a ValidationError naming the field, not a
    # database error (PostgreSQL) or a silently stored over-long name (SQLite).
    with pytest.raises(ValidationError) as excinfo:
        organisation_create(name="A" * 201, group_name="G", actor=ACTOR)

    assert error_fields(excinfo) == {"name"}
    assert not Organisation.objects.filter(name="A" * 201).exists()


def test_it_gives_organisations_whose_names_slugify_alike_distinct_slugs() -> None:
    first = organisation_create(name="Acme Ltd", group_name="G", actor=ACTOR)
    second = organisation_create(name="Acme-Ltd", group_name="G", actor=ACTOR)

    assert (first.slug, second.slug) == ("acme-ltd", "acme-ltd-2")


def test_it_audits_organisation_creation() -> None:
    organisation = organisation_create(name="Acme", group_name="Acme Holdings", actor=ACTOR)

    [event] = audit_events("organisation.created", organisation)
    assert event.actor == ACTOR
    assert event.organisation == organisation
    assert event.group == organisation.group
    assert event.data == {"name": "Acme", "group": "Acme Holdings"}


# product_create / product_update / product_delete


def test_it_creates_a_product_on_a_base_model_of_its_version() -> None:
    organisation = OrganisationFactory()

    product = product_create(
        organisation=organisation, name="Chat", licence_version=licence("llama-3.1"), actor=ACTOR,
        base_model=base_model("meta-llama/Llama-3.1-8B-Instruct"), launch_date=dt.date(2024, 9, 2),
        status=Product.Status.LIVE,
    )

    product.refresh_from_db()
    assert (product.organisation, product.name, product.status) == (organisation, "Chat", "live")
    assert product.base_model.repo_id == "meta-llama/Llama-3.1-8B-Instruct"
    [event] = audit_events("product.created", product)
    assert event.organisation == organisation
    assert event.data == {"name": "Chat", "licence_version": "llama-3.1",
                          "base_model": "meta-llama/Llama-3.1-8B-Instruct", "status": "live"}


def test_it_refuses_a_base_model_of_another_version() -> None:
    organisation = OrganisationFactory()

    with pytest.raises(ValidationError) as excinfo:
        product_create(
            organisation=organisation, name="Chat", licence_version=licence("llama-3.1"), actor=ACTOR,
            base_model=base_model("meta-llama/Llama-2-7b-chat-hf"),
        )

    assert error_fields(excinfo) == {"base_model"}
    assert "Llama 2" in excinfo.value.message_dict["base_model"][0]
    assert not organisation.products.exists()


def test_it_refuses_a_duplicate_product_name_within_an_organisation_only() -> None:
    organisation, other = OrganisationFactory(), OrganisationFactory()
    ProductFactory(organisation=organisation, name="Chat")

    with pytest.raises(ValidationError) as excinfo:
        product_create(organisation=organisation, name="Chat", licence_version=licence("llama-3.1"), actor=ACTOR)
    elsewhere = product_create(organisation=other, name="Chat", licence_version=licence("llama-3.1"), actor=ACTOR)

    assert error_fields(excinfo) == {"name"}
    assert organisation.products.count() == 1
    assert elsewhere.organisation == other


def test_it_updates_a_product_and_audits_before_and_after() -> None:
    product = ProductFactory(name="Chat", status=Product.Status.DEVELOPMENT)

    product_update(product=product, actor=ACTOR, name="Chat 2", status=Product.Status.LIVE)

    product.refresh_from_db()
    assert (product.name, product.status) == ("Chat 2", "live")
    [event] = audit_events("product.updated", product)
    assert event.data == {
        "before": {"name": "Chat", "status": "development"},
        "after": {"name": "Chat 2", "status": "live"},
    }


def test_it_refuses_to_move_a_product_to_another_organisation() -> None:
    product = ProductFactory()
    owner, other = product.organisation, OrganisationFactory()

    with pytest.raises(ValidationError) as excinfo:
        product_update(product=product, actor=ACTOR, organisation=other)

    assert error_fields(excinfo) == {"organisation"}
    product.refresh_from_db()
    assert product.organisation == owner
    assert audit_events("product.updated", product) == []


def test_it_refuses_to_rename_a_product_to_a_sibling_name_but_keeps_its_own() -> None:
    product = ProductFactory(name="Chat")
    ProductFactory(organisation=product.organisation, name="Translate")

    with pytest.raises(ValidationError) as excinfo:
        product_update(product=product, actor=ACTOR, name="Translate")
    product_update(product=product, actor=ACTOR, name="Chat", description="unchanged name")

    assert error_fields(excinfo) == {"name"}
    product.refresh_from_db()
    assert (product.name, product.description) == ("Chat", "unchanged name")


def test_it_clears_the_old_versions_base_model_when_the_version_changes() -> None:
    product = ProductFactory(
        licence_version=licence("llama-3.1"), base_model=base_model("meta-llama/Llama-3.1-8B-Instruct")
    )

    product_update(product=product, actor=ACTOR, licence_version=licence("llama-3.3"))

    product.refresh_from_db()
    assert product.licence_version.slug == "llama-3.3"
    assert product.base_model is None
    [event] = audit_events("product.updated", product)
    assert event.data["before"] == {"licence_version": "llama-3.1", "base_model": "meta-llama/Llama-3.1-8B-Instruct"}
    assert event.data["after"] == {"licence_version": "llama-3.3", "base_model": None}


def test_it_moves_a_product_to_a_new_version_and_its_base_model_together() -> None:
    product = ProductFactory(
        licence_version=licence("llama-3.1"), base_model=base_model("meta-llama/Llama-3.1-8B-Instruct")
    )

    product_update(
        product=product, actor=ACTOR, licence_version=licence("llama-3.3"),
        base_model=base_model("meta-llama/Llama-3.3-70B-Instruct"),
    )

    product.refresh_from_db()
    assert product.base_model.repo_id == "meta-llama/Llama-3.3-70B-Instruct"


def test_it_refuses_an_update_that_pairs_a_version_with_another_versions_base_model() -> None:
    product = ProductFactory(licence_version=licence("llama-3.1"))

    with pytest.raises(ValidationError) as excinfo:
        product_update(
            product=product, actor=ACTOR, licence_version=licence("llama-3.3"),
            base_model=base_model("meta-llama/Llama-3.1-8B-Instruct"),
        )

    assert error_fields(excinfo) == {"base_model"}
    product.refresh_from_db()
    assert product.licence_version.slug == "llama-3.1"


def test_it_deletes_a_product_without_acceptances_and_audits_it() -> None:
    product = ProductFactory(name="Chat")
    pk = product.pk

    product_delete(product=product, actor=ACTOR)

    assert not Product.objects.filter(pk=pk).exists()
    [event] = AuditEvent.objects.filter(action="product.deleted", object_id=str(pk))
    assert event.data == {"name": "Chat"}


def test_it_refuses_to_delete_a_product_with_acceptances() -> None:
    product = ProductFactory()
    accept(product.organisation, product=product)

    with pytest.raises(ValidationError) as excinfo:
        product_delete(product=product, actor=ACTOR)

    assert error_fields(excinfo) == {"product"}
    assert Product.objects.filter(pk=product.pk).exists()
    assert audit_events("product.deleted", product) == []


# licence_accept


def test_it_records_an_acceptance_of_the_catalogue_text() -> None:
    product = ProductFactory()
    version = licence("llama-3.1")

    acceptance = licence_accept(
        organisation=product.organisation, licence_version=version, licence_sha256=version.licence_sha256.upper(),
        aup_version="llama-3.1", aup_sha256=version.aup_sha256.upper(), accepted_by=ACTOR, product=product,
        note="signed off",
    )

    acceptance.refresh_from_db()
    assert acceptance.organisation == product.organisation
    assert acceptance.product == product
    assert acceptance.licence_sha256 == version.licence_sha256
    assert acceptance.aup_sha256 == version.aup_sha256 == AUP_3_1_SHA256
    assert (acceptance.aup_version, acceptance.accepted_by, acceptance.note) == ("llama-3.1", ACTOR, "signed off")
    assert acceptance.accepted_at is not None
    [event] = audit_events("licence.accepted", acceptance)
    assert event.actor == ACTOR
    assert event.data == {
        "licence_version": "llama-3.1", "licence_sha256": version.licence_sha256, "aup_version": "llama-3.1",
        "aup_sha256": AUP_3_1_SHA256, "product": product.pk,
    }


def test_it_records_the_catalogues_aup_hash_for_a_caller_that_shows_none() -> None:
    organisation = OrganisationFactory()

    acceptance = accept(organisation, "llama-3.1")  # no aup_sha256: a command or script, not a person's screen

    assert acceptance.aup_sha256 == AUP_3_1_SHA256


def test_it_refuses_an_acceptance_of_another_aup_text() -> None:
    """Llama 3.1, section 1.b.iv: use must "adhere to the Acceptable Use Policy for the Llama Materials (...),
    which is hereby incorporated by reference into this Agreement". The AUP is part of what is agreed to, so its
    text is pinned like the licence's.

    Hand-computed: the client shows the Llama 3.3 AUP text (another hash) for a Llama 3.1 acceptance: refused,
    naming aup_sha256, and nothing is recorded.
    """
    organisation = OrganisationFactory()
    version = licence("llama-3.1")

    with pytest.raises(ValidationError) as excinfo:
        licence_accept(
            organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
            aup_version="llama-3.1", aup_sha256=licence("llama-3.3").aup_sha256, accepted_by=ACTOR,
        )

    assert error_fields(excinfo) == {"aup_sha256"}
    assert AUP_3_1_SHA256 in excinfo.value.message_dict["aup_sha256"][0]
    assert not LicenceAcceptance.objects.filter(organisation=organisation).exists()


def test_it_accepts_a_blank_aup_hash_only_where_the_catalogue_pins_none() -> None:
    organisation = OrganisationFactory()
    version = licence("llama-3.1")
    catalogue_row_update(version, aup_sha256="")

    recorded = licence_accept(organisation=organisation, licence_version=version,
                              licence_sha256=version.licence_sha256, aup_version="llama-3.1", aup_sha256="",
                              accepted_by=ACTOR)
    with pytest.raises(ValidationError) as excinfo:
        licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                       aup_version="llama-3.1", aup_sha256=AUP_3_1_SHA256, accepted_by=ACTOR)

    assert recorded.aup_sha256 == ""
    assert error_fields(excinfo) == {"aup_sha256"}
    state = acceptance_state(organisation=organisation, licence_version=version)
    assert (state.aup_accepted, state.aup_basis) == (True, "aup_version")


def test_it_refuses_an_acceptance_of_another_licence_text() -> None:
    organisation = OrganisationFactory()
    version = licence("llama-3.1")

    with pytest.raises(ValidationError) as excinfo:
        licence_accept(
            organisation=organisation, licence_version=version, licence_sha256=licence("llama-3.3").licence_sha256,
            aup_version="llama-3.1", accepted_by=ACTOR,
        )

    assert error_fields(excinfo) == {"licence_sha256"}
    assert not LicenceAcceptance.objects.filter(organisation=organisation).exists()


def test_it_refuses_an_acceptance_of_another_aup() -> None:
    organisation = OrganisationFactory()
    version = licence("llama-3.1")

    with pytest.raises(ValidationError) as excinfo:
        licence_accept(
            organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
            aup_version="llama-3", accepted_by=ACTOR,
        )

    assert error_fields(excinfo) == {"aup_version"}
    assert not LicenceAcceptance.objects.filter(organisation=organisation).exists()


def test_it_refuses_an_acceptance_for_another_organisations_product() -> None:
    organisation = OrganisationFactory()
    foreign_product = ProductFactory()

    with pytest.raises(ValidationError) as excinfo:
        accept(organisation, product=foreign_product)

    assert error_fields(excinfo) == {"product"}
    assert not LicenceAcceptance.objects.exists()


def test_it_refuses_an_acceptance_for_a_product_on_another_version() -> None:
    product = ProductFactory(licence_version=licence("llama-3.3"))

    with pytest.raises(ValidationError) as excinfo:
        accept(product.organisation, slug="llama-3.1", product=product)

    assert error_fields(excinfo) == {"product"}
    assert not LicenceAcceptance.objects.exists()


def test_it_never_changes_or_deletes_an_acceptance() -> None:
    acceptance = accept(OrganisationFactory())
    acceptance.note = "rewritten"

    with pytest.raises(ValidationError):
        acceptance.save()
    with pytest.raises(ValidationError):
        acceptance.delete()

    acceptance.refresh_from_db()
    assert acceptance.note == ""


# grant_record


def test_it_records_a_grant_for_its_versions() -> None:
    group = GroupFactory()

    recorded = grant(group, licence_versions=[licence("llama-3.1"), licence("llama-3.3")], scope="All products")

    recorded.refresh_from_db()
    assert sorted(recorded.licence_versions.values_list("slug", flat=True)) == ["llama-3.1", "llama-3.3"]
    assert (recorded.valid_from, recorded.valid_until) == (dt.date(2024, 8, 1), dt.date(2025, 7, 31))
    [event] = audit_events("grant.recorded", recorded)
    assert event.group == group
    assert event.data["licence_versions"] == ["llama-3.1", "llama-3.3"]
    assert event.data["valid_from"] == "2024-08-01"


def test_it_refuses_a_grant_without_versions() -> None:
    with pytest.raises(ValidationError) as excinfo:
        grant(GroupFactory(), licence_versions=[])

    assert error_fields(excinfo) == {"licence_versions"}
    assert not MetaGrant.objects.exists()


def test_it_refuses_a_grant_that_ends_before_it_starts() -> None:
    with pytest.raises(ValidationError) as excinfo:
        grant(GroupFactory(), valid_from=dt.date(2024, 8, 1), valid_until=dt.date(2024, 7, 31))

    assert error_fields(excinfo) == {"valid_until"}
    assert not MetaGrant.objects.exists()


def test_it_accepts_a_grant_valid_for_a_single_day() -> None:
    recorded = grant(GroupFactory(), valid_from=dt.date(2024, 8, 1), valid_until=dt.date(2024, 8, 1))

    assert recorded.pk is not None


def test_it_refuses_a_revocation_that_names_no_grant() -> None:
    with pytest.raises(ValidationError) as excinfo:
        grant(GroupFactory(), revoked=True)

    assert error_fields(excinfo) == {"revoked"}
    assert not MetaGrant.objects.exists()


def test_it_refuses_to_supersede_another_groups_grant() -> None:
    foreign = grant(GroupFactory())

    with pytest.raises(ValidationError) as excinfo:
        grant(GroupFactory(), supersedes=foreign)

    assert error_fields(excinfo) == {"supersedes"}
    assert MetaGrant.objects.count() == 1


def test_it_audits_a_revocation_as_such() -> None:
    group = GroupFactory()
    original = grant(group)

    revocation = grant(group, supersedes=original, revoked=True, reference="META-2024-001 withdrawn")

    [event] = audit_events("grant.revoked", revocation)
    assert event.data["supersedes"] == original.pk
    assert audit_events("grant.recorded", revocation) == []


def test_it_never_changes_or_deletes_a_grant() -> None:
    recorded = grant(GroupFactory())
    recorded.reference = "rewritten"

    with pytest.raises(ValidationError):
        recorded.save()
    with pytest.raises(ValidationError):
        recorded.delete()

    recorded.refresh_from_db()
    assert recorded.reference == "META-2024-001"


# selectors


def test_it_reports_nothing_accepted_before_any_acceptance() -> None:
    state = acceptance_state(organisation=OrganisationFactory(), licence_version=licence("llama-3.1"))

    assert (state.licence_accepted, state.aup_accepted, state.last_accepted_at) == (False, False, None)


def test_it_reports_an_acceptance_of_the_version_for_that_organisation_only() -> None:
    organisation, other = OrganisationFactory(), OrganisationFactory()
    acceptance = accept(organisation, "llama-3.1")

    mine = acceptance_state(organisation=organisation, licence_version=licence("llama-3.1"))
    theirs = acceptance_state(organisation=other, licence_version=licence("llama-3.1"))
    other_version = acceptance_state(organisation=organisation, licence_version=licence("llama-3.3"))

    assert (mine.licence_accepted, mine.aup_accepted, mine.last_accepted_at) == (True, True, acceptance.accepted_at)
    assert (theirs.licence_accepted, theirs.aup_accepted) == (False, False)
    assert (other_version.licence_accepted, other_version.aup_accepted) == (False, False)


def test_it_asks_again_once_the_catalogue_pins_a_new_licence_text() -> None:
    """Llama 3.1: "By clicking "I Accept" below or by using or distributing any portion or element of the Llama
    Materials, you agree to be bound by this Agreement." What was agreed to is the text accepted.

    Hand-computed: Acme accepted the text with hash bf2eac60...; the catalogue now pins "b" * 64. The licence is
    no longer accepted and the state names the new hash; the AUP (unchanged) still is.
    """
    organisation = OrganisationFactory()
    accept(organisation, "llama-3.1")
    version = licence("llama-3.1")
    version.licence_sha256 = "b" * 64  # Meta republished the text; the admin pinned the new one
    version.save()

    state = acceptance_state(organisation=organisation, licence_version=version)

    assert (state.licence_accepted, state.aup_accepted, state.last_accepted_at) == (False, True, None)
    assert "b" * 64 in state.licence_required and "again" in state.licence_required
    assert state.aup_required == ""


def test_it_asks_again_for_the_aup_once_the_catalogue_pins_a_new_aup_text() -> None:
    """Llama 3.1, section 1.b.iv: the Acceptable Use Policy "is hereby incorporated by reference into this
    Agreement"; the AUP itself says "The most recent copy of this policy can be found at" its URL, so its text
    can change under the same version name.

    Hand-computed: Acme accepted Llama 3.1 with AUP hash f456a3f5...; the catalogue then pins a new AUP text
    "c" * 64, still called llama-3.1. The earlier acceptance no longer counts as AUP acceptance and the state
    names "c" * 64; the licence stays accepted; the earlier record is unchanged. A new acceptance of "c" * 64
    counts.
    """
    organisation = OrganisationFactory()
    earlier = accept(organisation, "llama-3.1")
    version = licence("llama-3.1")
    catalogue_row_update(version, aup_sha256="c" * 64)

    state = acceptance_state(organisation=organisation, licence_version=version)
    [listed] = acceptance_states(organisation_ids=[organisation.pk]).values()

    assert (state.licence_accepted, state.aup_accepted) == (True, False)
    assert "c" * 64 in state.aup_required and "llama-3.1" in state.aup_required and "again" in state.aup_required
    assert listed == state
    earlier.refresh_from_db()
    assert (earlier.aup_version, earlier.aup_sha256) == ("llama-3.1", AUP_3_1_SHA256)

    licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version="llama-3.1", aup_sha256="c" * 64, accepted_by=ACTOR)

    again = acceptance_state(organisation=organisation, licence_version=version)
    assert (again.licence_accepted, again.aup_accepted, again.aup_required) == (True, True, "")
    assert LicenceAcceptance.objects.filter(organisation=organisation).count() == 2


def test_it_names_the_hashes_to_accept_when_nothing_is_accepted() -> None:
    version = licence("llama-4")

    state = acceptance_state(organisation=OrganisationFactory(), licence_version=version)

    assert version.licence_sha256 in state.licence_required and "again" not in state.licence_required
    assert version.aup_sha256 in state.aup_required and "again" not in state.aup_required


@pytest.mark.parametrize(
    ("on", "in_force"),
    [
        (dt.date(2024, 7, 31), False),
        (dt.date(2024, 8, 1), True),
        (dt.date(2025, 1, 15), True),
        (dt.date(2025, 7, 31), True),
        (dt.date(2025, 8, 1), False),
    ],
)
def test_it_keeps_a_grant_in_force_between_its_first_and_last_day(on: dt.date, in_force: bool) -> None:
    group = GroupFactory()
    recorded = grant(group, valid_from=dt.date(2024, 8, 1), valid_until=dt.date(2025, 7, 31))

    assert list(grants_in_force(group=group, on=on)) == ([recorded] if in_force else [])


def test_it_keeps_an_open_ended_grant_in_force() -> None:
    group = GroupFactory()
    recorded = grant(group, valid_until=None)

    assert list(grants_in_force(group=group, on=dt.date(2030, 1, 1))) == [recorded]


def test_it_replaces_a_superseded_grant_with_its_successor() -> None:
    group = GroupFactory()
    original = grant(group)

    successor = grant(group, supersedes=original, reference="META-2024-001 amended")

    assert list(grants_in_force(group=group, on=dt.date(2024, 9, 1))) == [successor]
    assert original not in grants_in_force(group=group, on=dt.date(2024, 9, 1))


def test_it_leaves_nothing_in_force_after_a_revocation() -> None:
    group = GroupFactory()
    original = grant(group)

    grant(group, supersedes=original, revoked=True, reference="withdrawn", valid_from=dt.date(2024, 9, 1))

    assert list(grants_in_force(group=group, on=dt.date(2024, 10, 1))) == []


def test_it_keeps_a_revoked_grant_in_force_before_the_revocation_took_effect() -> None:
    group = GroupFactory()
    original = grant(group, valid_from=dt.date(2024, 8, 1))

    grant(group, supersedes=original, revoked=True, reference="withdrawn", valid_from=dt.date(2025, 3, 1))

    assert list(grants_in_force(group=group, on=dt.date(2025, 2, 28))) == [original]
    assert list(grants_in_force(group=group, on=dt.date(2025, 3, 1))) == []


def test_it_filters_grants_by_version_and_group() -> None:
    group, other_group = GroupFactory(), GroupFactory()
    covering = grant(group, licence_versions=[licence("llama-3.1"), licence("llama-3.3")])
    grant(other_group)
    on = dt.date(2024, 9, 1)

    assert list(grants_in_force(group=group, on=on, licence_version=licence("llama-3.3"))) == [covering]
    assert list(grants_in_force(group=group, on=on, licence_version=licence("llama-4"))) == []
    assert list(grants_in_force(group=group, on=on)) == [covering]


def test_it_shows_a_products_obligations_with_its_organisations_acceptance() -> None:
    product = ProductFactory(licence_version=licence("llama-3"))

    before = product_obligations_get(product=product)
    accept(product.organisation, "llama-3", product=product)
    after = product_obligations_get(product=product)

    assert before.version == "Llama 3"
    assert before.attribution_display == "Built with Meta Llama 3"
    assert before.derived_name_prefix == "Llama 3"
    assert before.notice_text.startswith("Meta Llama 3 is licensed under the Meta Llama 3 Community License")
    assert (before.licence_accepted, before.aup_accepted) == (False, False)
    assert (after.licence_accepted, after.aup_accepted) == (True, True)


def test_it_does_not_count_another_organisations_acceptance_for_a_product() -> None:
    product = ProductFactory(licence_version=licence("llama-3.1"))
    accept(OrganisationFactory(), "llama-3.1")

    obligations = product_obligations_get(product=product)

    assert (obligations.licence_accepted, obligations.aup_accepted) == (False, False)


def test_a_new_group_comes_with_its_default_policy() -> None:
    from governance.models import GroupPolicy

    organisation = organisation_create(name="Policy Co", group_name="Policy Group", actor="test")

    policy = GroupPolicy.objects.get(group=organisation.group)
    assert (policy.mode, policy.levels, policy.grace_days, policy.forecast_days) == ("enforce", [0.5, 0.75, 0.9], 30, 90)


# --- products and services not built on Llama (section 2 counts them all) -----------------------------------


def test_it_registers_a_product_not_built_on_llama_with_no_obligations() -> None:
    """Section 2 counts "the monthly active users of the products or services made available by or for Licensee,
    or Licensee's affiliates": every product or service, so one not built on Llama is registered too. It has no
    Llama licence, so no obligations and nothing to accept."""
    organisation = OrganisationFactory()

    product = product_create(organisation=organisation, name="Search", actor=ACTOR, status=Product.Status.LIVE)

    product.refresh_from_db()
    assert (product.licence_version, product.base_model, product.built_on_llama) == (None, None, False)
    assert product_obligations_get(product=product) is None
    [event] = audit_events("product.created", product)
    assert event.data == {"name": "Search", "licence_version": None, "base_model": None, "status": "live"}
    with pytest.raises(ValidationError) as excinfo:
        accept(organisation, "llama-3.1", product=product)
    assert error_fields(excinfo) == {"product"}
    assert "not built on Llama" in excinfo.value.message_dict["product"][0]
    assert not LicenceAcceptance.objects.exists()


def test_it_refuses_a_llama_base_model_without_its_licence_version() -> None:
    """A base model is a Llama model released under a version: a product on it is built on Llama."""
    organisation = OrganisationFactory()

    with pytest.raises(ValidationError) as excinfo:
        product_create(organisation=organisation, name="Chat", actor=ACTOR,
                       base_model=base_model("meta-llama/Llama-3.1-8B-Instruct"))

    assert error_fields(excinfo) == {"licence_version"}
    assert "llama-3.1" in excinfo.value.message_dict["licence_version"][0]
    assert not organisation.products.exists()


def test_it_counts_a_product_not_built_on_llama_in_the_groups_700m_test(settings) -> None:
    """Section 2: "the monthly active users of the products or services made available by or for Licensee, or
    Licensee's affiliates ... is greater than 700 million monthly active users in the preceding calendar month".

    Hand-computed, with the Llama 3.1 threshold lowered to 4: in June 2024 (the month before the 3.1 release
    date) Acme's Chat on Llama 3.1 has users u1, u2, u3; its affiliate's Search, not built on Llama, has u3, u4,
    u5. The group's users are u1..u5: 5 > 4, so Llama 3.1's licence-accurate test is over. Counting only the
    Llama product would give 3 (below)."""
    from governance.compliance.services import group_evaluate
    from governance.metering.services import activity_ingest
    from governance.models import ComplianceStatus

    settings.METERING_RETENTION_DAYS = 5000
    LicenceVersion.objects.filter(slug="llama-3.1").update(mau_threshold=4)
    group = GroupFactory()
    acme, labs = OrganisationFactory(group=group), OrganisationFactory(group=group)
    chat = product_create(organisation=acme, name="Chat", licence_version=licence("llama-3.1"), actor=ACTOR)
    search = product_create(organisation=labs, name="Search", actor=ACTOR)
    activity_ingest(product=chat, day=dt.date(2024, 6, 10), user_ids=["u1", "u2", "u3"])
    activity_ingest(product=search, day=dt.date(2024, 6, 20), user_ids=["u3", "u4", "u5"])

    group_evaluate(group=group, today=dt.date(2024, 7, 23))

    statuses = ComplianceStatus.objects.filter(group=group, rule="licence_accurate")
    assert [(s.licence_version.slug, s.month, s.estimate, s.state) for s in statuses] == [
        ("llama-3.1", dt.date(2024, 6, 1), 5, "over")]  # one status per Llama version; none for Search


def test_it_records_a_product_as_not_built_on_llama_dropping_its_base_model() -> None:
    product = ProductFactory(licence_version=licence("llama-3.1"),
                             base_model=base_model("meta-llama/Llama-3.1-8B-Instruct"))

    product_update(product=product, actor=ACTOR, licence_version=None)

    product.refresh_from_db()
    assert (product.licence_version, product.base_model) == (None, None)
    [event] = audit_events("product.updated", product)
    assert event.data["after"] == {"licence_version": None, "base_model": None}


def test_it_keeps_the_licence_version_of_a_product_with_deployments() -> None:
    from inference.models import Deployment

    product = ProductFactory(licence_version=licence("llama-3.1"))
    Deployment.objects.create(organisation=product.organisation, product=product, licence_version=licence("llama-3.1"),
                              base_model=base_model("meta-llama/Llama-3.1-8B-Instruct"), model_source="x/y",
                              served_model_name="chat", created_by="test")

    with pytest.raises(ValidationError) as excinfo:
        product_update(product=product, actor=ACTOR, licence_version=None)

    assert error_fields(excinfo) == {"licence_version"}
    product.refresh_from_db()
    assert product.licence_version == licence("llama-3.1")


# --- the EU clause at product registration --------------------------------------------------------------------


def test_it_refuses_an_eu_company_a_product_on_a_multimodal_model_quoting_the_clause() -> None:
    """Llama 3.2 AUP: "With respect to any multimodal models included in Llama 3.2, the rights granted under
    Section 1(a) of the Llama 3.2 Community License Agreement are not being granted to you if you are ... a company
    with a principal place of business in, the European Union." An EU company registering a product on
    Llama-3.2-11B-Vision-Instruct is refused, naming base_model; the text-only 1B is fine."""
    organisation = OrganisationFactory(eu_domiciled=True)

    with pytest.raises(ValidationError) as excinfo:
        product_create(organisation=organisation, name="Vision", licence_version=licence("llama-3.2"), actor=ACTOR,
                       base_model=base_model("meta-llama/Llama-3.2-11B-Vision-Instruct"))

    assert error_fields(excinfo) == {"base_model"}
    assert "With respect to any multimodal models included in Llama 3.2" in excinfo.value.message_dict["base_model"][0]
    assert not organisation.products.exists()
    text = product_create(organisation=organisation, name="Text", licence_version=licence("llama-3.2"), actor=ACTOR,
                          base_model=base_model("meta-llama/Llama-3.2-1B-Instruct"))
    assert text.pk is not None


def test_it_lets_a_company_outside_the_eu_register_a_multimodal_product() -> None:
    """The clause withholds the rights only from "a company with a principal place of business in, the European
    Union": Llama 4 Scout for a company outside the EU is registered."""
    product = product_create(organisation=OrganisationFactory(), name="Scout", licence_version=licence("llama-4"),
                             actor=ACTOR, base_model=base_model("meta-llama/Llama-4-Scout-17B-16E-Instruct"))

    assert product.base_model.multimodal


def test_it_keeps_a_product_recorded_before_the_move_into_the_eu_editable_but_refuses_a_new_multimodal_model() -> None:
    """What is already recorded does not change: a product registered on a multimodal model before the company
    moved into the EU can still be edited; choosing a multimodal model for it now is refused."""
    organisation = OrganisationFactory()
    vision = product_create(organisation=organisation, name="Vision", licence_version=licence("llama-3.2"),
                            actor=ACTOR, base_model=base_model("meta-llama/Llama-3.2-11B-Vision-Instruct"))
    text = product_create(organisation=organisation, name="Text", licence_version=licence("llama-3.2"), actor=ACTOR,
                          base_model=base_model("meta-llama/Llama-3.2-1B-Instruct"))
    organisation.eu_domiciled = True
    organisation.save()

    product_update(product=vision, actor=ACTOR, description="Image captions")
    with pytest.raises(ValidationError) as excinfo:
        product_update(product=text, actor=ACTOR, base_model=base_model("meta-llama/Llama-3.2-90B-Vision-Instruct"))

    assert error_fields(excinfo) == {"base_model"}
    text.refresh_from_db()
    assert text.base_model.repo_id == "meta-llama/Llama-3.2-1B-Instruct"


# --- clause 1.b.ii: an integrated end user product ---------------------------------------------------------------

def test_it_records_an_exemption_with_its_evidence_and_audits_it() -> None:
    """Clause 1.b.ii: "If you receive Llama Materials, or any derivative works thereof, from a Licensee as part of an
    integrated end user product, then Section 2 of this Agreement will not apply to you." Acme receives Llama
    only inside Globex's assistant appliance: its exemption is in force, with the supplier and evidence."""
    organisation = OrganisationFactory(name="Acme")

    exemption = exemption_record(organisation=organisation, supplier="Globex", recorded_by=ACTOR,
                                 evidence="Globex appliance agreement 2025-17, section 4")

    assert organisation_exemption(organisation=organisation) == exemption
    assert (exemption.supplier, exemption.evidence, exemption.recorded_by, exemption.in_force) == (
        "Globex", "Globex appliance agreement 2025-17, section 4", ACTOR, True)
    [event] = audit_events("exemption.recorded", exemption)
    assert event.organisation == organisation
    assert event.data == {"clause": "1.b.ii", "supplier": "Globex",
                          "evidence": "Globex appliance agreement 2025-17, section 4"}


@pytest.mark.parametrize("supplier, evidence, fields", [
    ("Globex", "", {"evidence"}),
    ("Globex", "   \n ", {"evidence"}),
    ("", "Agreement 17", {"supplier"}),
    ("", "", {"supplier", "evidence"}),
    ("x" * 201, "Agreement 17", {"supplier"}),
])
def test_it_refuses_an_exemption_without_evidence_or_supplier_naming_the_field(supplier: str, evidence: str,
                                                                               fields: set[str]) -> None:
    """Clause 1.b.ii exempts only what is received "as part of an integrated end user product" from a licensee:
    without evidence of it, or the licensee it comes from, nothing is recorded."""
    organisation = OrganisationFactory()

    with pytest.raises(ValidationError) as excinfo:
        exemption_record(organisation=organisation, supplier=supplier, evidence=evidence, recorded_by=ACTOR)

    assert error_fields(excinfo) == fields
    assert not Exemption.objects.exists()
    assert not AuditEvent.objects.filter(action="exemption.recorded").exists()


def test_it_withdraws_an_exemption_keeping_the_record() -> None:
    organisation = OrganisationFactory()
    exemption = exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17",
                                 recorded_by=ACTOR)

    withdrawn = exemption_withdraw(organisation=organisation, withdrawn_by="bob@example.com")

    assert withdrawn.pk == exemption.pk
    assert (withdrawn.in_force, withdrawn.withdrawn_by) == (False, "bob@example.com")
    assert organisation_exemption(organisation=organisation) is None
    assert audit_events("exemption.withdrawn", exemption)[0].actor == "bob@example.com"
    with pytest.raises(ValidationError, match="no exemption in force"):
        exemption_withdraw(organisation=organisation, withdrawn_by=ACTOR)
    with pytest.raises(ValidationError, match="withdraw one instead"):
        withdrawn.delete()
    assert Exemption.objects.get().withdrawn_by == "bob@example.com"  # the second withdrawal changed nothing


def test_it_refuses_a_second_exemption_while_one_is_in_force_and_takes_a_new_one_after_withdrawal() -> None:
    organisation = OrganisationFactory()
    exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17", recorded_by=ACTOR)

    with pytest.raises(ValidationError, match="already has an exemption in force"):
        exemption_record(organisation=organisation, supplier="Initech", evidence="Agreement 3", recorded_by=ACTOR)
    exemption_withdraw(organisation=organisation, withdrawn_by=ACTOR)
    renewed = exemption_record(organisation=organisation, supplier="Initech", evidence="Agreement 3",
                               recorded_by=ACTOR)

    assert organisation_exemption(organisation=organisation) == renewed
    assert [e.supplier for e in Exemption.objects.order_by("id")] == ["Globex", "Initech"]


def test_it_refuses_the_exemption_to_an_organisation_running_llama_on_the_pool() -> None:
    """Clause 1.b.ii covers Llama Materials received "from a Licensee as part of an integrated end user product":
    an organisation running Llama-3.1-8B on the pool receives the weights themselves. Once the deployment is
    deleted the exemption can be recorded."""
    from inference.models import Deployment

    organisation = OrganisationFactory()
    product = ProductFactory(organisation=organisation, licence_version=licence("llama-3.1"))
    deployment = Deployment.objects.create(
        organisation=organisation, product=product, licence_version=licence("llama-3.1"), model_source="x/y",
        base_model=base_model("meta-llama/Llama-3.1-8B-Instruct"), served_model_name="chat", created_by="test")

    with pytest.raises(ValidationError, match=r"runs Llama models on the pool \(chat\)"):
        exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17", recorded_by=ACTOR)
    assert not Exemption.objects.exists()
    Deployment.objects.filter(pk=deployment.pk).update(deleted=True)
    exemption = exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17",
                                 recorded_by=ACTOR)

    assert exemption.in_force


def test_an_exempt_organisation_still_records_its_products_built_on_llama() -> None:
    """1.b.ii: "Section 2 of this Agreement will not apply to you", and only Section 2: the integrated product the
    organisation received is built on Llama 3.1, is recorded as such and keeps its obligations (the Notice)."""
    organisation = OrganisationFactory()
    exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17", recorded_by=ACTOR)

    product = product_create(organisation=organisation, name="Globex Assistant", licence_version=licence("llama-3.1"),
                             actor=ACTOR)

    assert product.built_on_llama
    assert product_obligations_get(product=product).notice_text.startswith("Llama 3.1 is licensed")


def test_it_finds_the_exemptions_of_a_group_by_organisation() -> None:
    group = GroupFactory()
    exempt, other = OrganisationFactory(group=group), OrganisationFactory(group=group)
    exemption = exemption_record(organisation=exempt, supplier="Globex", evidence="Agreement 17", recorded_by=ACTOR)
    exemption_record(organisation=OrganisationFactory(), supplier="Globex", evidence="Agreement 9", recorded_by=ACTOR)

    assert group_exemptions(group=group) == {exempt.pk: exemption}
    assert organisation_exemption(organisation=other) is None


# --- the organisation's domicile -------------------------------------------------------------------------------


def test_it_records_a_change_of_domicile_once_and_audits_it() -> None:
    organisation = OrganisationFactory()

    first = organisation_domicile_set(organisation=organisation, eu_domiciled=True, actor=ACTOR)
    again = organisation_domicile_set(organisation=organisation, eu_domiciled=True, actor=ACTOR)

    organisation.refresh_from_db()
    assert organisation.eu_domiciled is True
    assert (first.changed, again.changed) == (True, False)
    [event] = audit_events("organisation.domicile_changed", organisation)
    assert event.data == {"eu_domiciled": True, "previous": False}


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_it_refuses_a_domicile_that_is_not_true_or_false(value: object) -> None:
    organisation = OrganisationFactory()

    with pytest.raises(ValidationError) as excinfo:
        organisation_domicile_set(organisation=organisation, eu_domiciled=value, actor=ACTOR)

    assert error_fields(excinfo) == {"eu_domiciled"}
    organisation.refresh_from_db()
    assert organisation.eu_domiciled is False

"""The verdict as counsel reads it, end to end: every figure of the month, both counting bases, coverage, the
month with no figure, and the months each base model's own date points at.

Each case quotes the licence sentence it implements (section 2, "Additional Commercial Terms"): a licence from
Meta is needed if "the monthly active users of the products or services made available by or for Licensee, or
Licensee's affiliates, is greater than 700 million monthly active users in the preceding calendar month".
Thresholds are lowered in the catalogue so exactly counted users stand for 700M.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from access.keys import api_key_create
from access.models import Membership
from governance.compliance.services import access_check, declared_figure_record, group_evaluate
from governance.metering.services import activity_ingest
from governance.models import Alert, ComplianceStatus, CoverageAttestation, DeclaredFigure, GroupPolicy
from licensing.models import BaseModel, LicenceVersion, Product
from licensing.services import licence_accept, organisation_create, product_create
from tests.factories import MembershipFactory, licence

pytestmark = pytest.mark.django_db
TODAY = dt.date(2025, 1, 20)
JUNE_2024 = dt.date(2024, 6, 1)
DECEMBER_2024 = dt.date(2024, 12, 1)


@pytest.fixture(autouse=True)
def _old_days(settings: Any) -> None:
    settings.METERING_RETENTION_DAYS = 5000
    cache.clear()


@pytest.fixture
def acme() -> dict[str, Any]:
    """Acme Social (managing) and Acme Cloud, one Llama 3.1 product each, a threshold of 1,000."""
    LicenceVersion.objects.filter(slug="llama-3.1").update(mau_threshold=1_000)
    version = licence("llama-3.1")
    social = organisation_create(name="Acme Social", group_name="Acme Holdings", actor="test")
    cloud = organisation_create(name="Acme Cloud", group_name="Acme Holdings", actor="test")
    chat = product_create(organisation=social, name="Chat", licence_version=version, actor="test",
                          status=Product.Status.LIVE, launch_date=dt.date(2023, 1, 1))
    search = product_create(organisation=cloud, name="Search", licence_version=version, actor="test",
                            status=Product.Status.LIVE, launch_date=dt.date(2023, 1, 1))
    for org in (social, cloud):
        licence_accept(organisation=org, licence_version=version, licence_sha256=version.licence_sha256,
                       aup_version=version.aup_version, accepted_by="counsel")
    _, key = api_key_create(organisation=social, name="admin", scopes=["read", "write", "admin"], created_by="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return {"group": social.group, "social": social, "cloud": cloud, "chat": chat, "search": search,
            "version": version, "client": client}


def users(first: int, last: int) -> list[str]:
    return [f"u{n}" for n in range(first, last + 1)]


def metering_since_november(product: Product) -> None:
    """Metering covers all of December 2024 (a month metering started during is a partial month)."""
    activity_ingest(product=product, day=dt.date(2024, 11, 1), user_ids=["u0"])


def status(group: Any, rule: str = "last_month") -> ComplianceStatus:
    return ComplianceStatus.objects.get(group=group, licence_version__slug="llama-3.1", rule=rule)


def test_a_declaration_a_little_above_the_meter_never_unblocks_an_uncertain_month(acme) -> None:
    """Hand case of the issue: a figure of 690M [680M, 705M] straddles "greater than 700 million" (uncertain);
    a declared 695M alone is approaching. Both count: uncertain, and access stays blocked."""
    LicenceVersion.objects.filter(slug="llama-3.1").update(mau_threshold=700_000_000)
    group = acme["group"]
    declared_figure_record(group=group, month=JUNE_2024, mau=690_000_000, lower=680_000_000, upper=705_000_000,
                           evidence="metering export, 95% interval", declared_by="counsel")
    declared_figure_record(group=group, month=JUNE_2024, mau=695_000_000, evidence="board pack",
                           declared_by="cfo")
    group_evaluate(group=group, today=TODAY)
    accurate = status(group, "licence_accurate")
    assert (accurate.state, accurate.estimate, accurate.lower, accurate.upper) == (
        "uncertain", 690_000_000, 680_000_000, 705_000_000)
    assert [f["state"] for f in accurate.considered["figures"]] == ["uncertain", "approaching"]
    decision = access_check(organisation=acme["social"], licence_version=acme["version"], fresh=True)
    assert (decision.allowed, decision.reason) == (False, "uncertain_threshold")


def test_both_counting_bases_appear_and_the_policy_chooses_which_decides(acme) -> None:
    """One person using Chat and Search is one distinct person (distinct_people) or two (sum_of_products, the
    most conservative reading of "monthly active users of the products or services"). Chat has 600 users,
    Search 500, 300 of them shared: 800 distinct, 1,100 summed. Threshold 1,000."""
    group, client = acme["group"], acme["client"]
    metering_since_november(acme["chat"])
    activity_ingest(product=acme["chat"], day=DECEMBER_2024.replace(day=5), user_ids=users(0, 599))
    activity_ingest(product=acme["search"], day=DECEMBER_2024.replace(day=6), user_ids=users(300, 799))
    group_evaluate(group=group, today=TODAY)
    body = client.get(f"/api/v1/groups/{group.pk}/compliance/").json()
    last = next(s for s in body["statuses"] if s["rule"] == "last_month" and s["licence_version"] == "llama-3.1")
    assert (last["state"], last["basis"], last["estimate"]) == ("approaching", "distinct_people", 800)
    assert (last["bases"]["distinct_people"]["estimate"], last["bases"]["sum_of_products"]["estimate"]) == (800, 1100)
    changed = client.patch(f"/api/v1/groups/{group.pk}/policy/", {"counting_basis": "sum_of_products"},
                           format="json")
    assert changed.status_code == 200 and changed.json()["counting_basis"] == "sum_of_products"
    group_evaluate(group=group, today=TODAY)
    summed = status(group)
    assert (summed.state, summed.basis, summed.estimate) == ("over", "sum_of_products", 1100)
    bad = client.patch(f"/api/v1/groups/{group.pk}/policy/", {"counting_basis": "guess"}, format="json")
    assert bad.status_code == 400 and "counting_basis" in bad.json()
    # The MAU answer and the evidence report show both numbers too.
    mau = client.get(f"/api/v1/groups/{group.pk}/mau/?month=2024-12").json()
    assert (mau["estimate"], mau["counting_basis"]) == (800, "sum_of_products")
    assert (mau["bases"]["distinct_people"]["estimate"], mau["bases"]["sum_of_products"]["estimate"]) == (800, 1100)
    evidence = client.get(f"/api/v1/groups/{group.pk}/evidence/?month=2024-12").json()
    assert evidence["counting"]["bases"]["sum_of_products"]["estimate"] == 1100
    assert sorted(evidence["counting"]["coverage"]["metered"]) == ["Chat (Acme Social)", "Search (Acme Cloud)"]
    rows = client.get(f"/api/v1/groups/{group.pk}/evidence/?month=2024-12&format=csv").content.decode()
    assert "basis,sum_of_products,Acme Holdings,,2024-12,1100" in rows
    assert "basis,distinct_people,Acme Holdings,,2024-12,800" in rows
    html = client.get(f"/api/v1/groups/{group.pk}/evidence/?month=2024-12&format=html").content.decode()
    assert "Both counting bases" in html  # in words: the summed basis decides, the distinct one is beside it
    assert re.search(r"added up</td><td[^>]*>used by the statuses</td><td[^>]*>1,100<", html), html
    # And the portal's group page, to a member of either organisation: both numbers in the December row.
    browser = Client()
    browser.force_login(MembershipFactory(organisation=acme["cloud"], role=Membership.Role.VIEWER).user)
    page = browser.get(f"/groups/{group.pk}/").content.decode()
    counted = page[page.index('id="counted-h"'):page.index('id="breakdown-h"')]
    assert '<th class="num" scope="col">Distinct people</th><th class="num" scope="col">Sum of products</th>' in counted
    december = counted[counted.index("December 2024"):].split("</tr>")[0]
    assert re.findall(r'<td class="num">([\d,]+) ', december) == ["800", "1,100"], december
    assert "added up (most conservative)</strong>" in counted  # the basis the statuses use, named
    assert re.search(r"affiliate</td><td[^>]*>shown beside it</td><td[^>]*>800<", html), html


def test_a_registered_service_that_is_not_metered_makes_below_read_partial_coverage(acme) -> None:
    """Section 2 counts every product or service of the licensee and its affiliates. Search is registered and
    live but sent nothing in December: the group's below is "below (partial coverage)", naming Search."""
    group, client = acme["group"], acme["client"]
    metering_since_november(acme["chat"])
    activity_ingest(product=acme["chat"], day=DECEMBER_2024.replace(day=5), user_ids=users(0, 99))
    group_evaluate(group=group, today=TODAY)
    last = next(s for s in client.get(f"/api/v1/groups/{group.pk}/compliance/").json()["statuses"]
                if s["rule"] == "last_month")
    assert (last["state"], last["label"]) == ("below", "below (partial coverage)")
    assert last["coverage"]["unmetered"] == ["Search (Acme Cloud)"] and last["coverage"]["attested"] is False
    assert "Search (Acme Cloud)" in last["coverage"]["gap"]
    decision = access_check(organisation=acme["social"], licence_version=acme["version"], fresh=True)
    assert decision.allowed  # partial coverage never blocks
    # A smaller declared figure decides nothing: the metered figure's gap stays named (it read a clean "below").
    declared = client.post(f"/api/v1/groups/{group.pk}/declarations/",
                           {"month": "2024-12", "mau": 50, "evidence": "board pack"}, format="json")
    assert declared.status_code == 201, declared.content
    group_evaluate(group=group, today=TODAY)
    last = next(s for s in client.get(f"/api/v1/groups/{group.pk}/compliance/").json()["statuses"]
                if s["rule"] == "last_month")
    assert (last["label"], last["coverage"]["complete"], last["coverage"]["declared"]) == (
        "below (partial coverage)", False, False)
    assert "Search (Acme Cloud)" in last["coverage"]["gap"]
    # Metered and attested: a clean below.
    activity_ingest(product=acme["search"], day=DECEMBER_2024.replace(day=7), user_ids=users(50, 120))
    attested = client.post(f"/api/v1/groups/{group.pk}/attestations/",
                           {"month": "2024-12", "statement": "Checked against the product register of both"},
                           format="json")
    assert attested.status_code == 201, attested.content
    assert {p["name"] for p in attested.json()["products"]} == {"Chat", "Search"}
    group_evaluate(group=group, today=TODAY)
    clean = status(group)
    assert (clean.state, clean.coverage["complete"], clean.coverage["unmetered"]) == ("below", True, [])


def test_an_attestation_or_declaration_that_is_wrong_is_a_400_and_records_nothing(acme) -> None:
    group, client = acme["group"], acme["client"]
    future = client.post(f"/api/v1/groups/{group.pk}/attestations/",
                         {"month": "2999-01", "statement": "looked"}, format="json")
    assert future.status_code == 400 and "future" in future.json()["month"][0]
    inverted = client.post(f"/api/v1/groups/{group.pk}/declarations/",
                           {"month": "2024-06", "mau": 500, "lower": 600, "upper": 400, "evidence": "x"},
                           format="json")
    assert inverted.status_code == 400 and inverted.json() == {"lower": ["Must be at most the figure (500); got 600."]}
    above = client.post(f"/api/v1/groups/{group.pk}/declarations/",
                        {"month": "2024-06", "mau": 500, "upper": 400, "evidence": "x"}, format="json")
    assert above.status_code == 400 and above.json() == {"upper": ["Must be at least the figure (500); got 400."]}
    assert not CoverageAttestation.objects.exists() and not DeclaredFigure.objects.exists()
    sibling = APIClient()
    _, key = api_key_create(organisation=acme["cloud"], name="x", scopes=["read", "admin"], created_by="t")
    sibling.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    refused = sibling.post(f"/api/v1/groups/{group.pk}/attestations/", {"month": "2024-06", "statement": "ok"},
                           format="json")
    assert refused.status_code == 403  # a group-wide statement: group admins only


def test_a_month_without_a_figure_alerts_once_and_blocks_only_when_the_policy_says_so(acme) -> None:
    """The licence tests June 2024 for Llama 3.1 (released July 23, 2024: "the preceding calendar month").
    Nothing was metered or declared then: unknown. The policy chooses whether that blocks."""
    group, client = acme["group"], acme["client"]
    group_evaluate(group=group, today=TODAY)
    group_evaluate(group=group, today=TODAY + dt.timedelta(days=40))
    unknown_alerts = Alert.objects.filter(group=group, level="unknown")
    assert [(a.month, a.rule) for a in unknown_alerts] == [(JUNE_2024, "licence_accurate")]
    assert "June 2024" in unknown_alerts[0].message
    body = client.get(f"/api/v1/groups/{group.pk}/compliance/").json()
    assert body["months_to_declare"] == [{"licence_version": "llama-3.1", "version_name": "Llama 3.1",
                                          "month": "2024-06"}]
    assert access_check(organisation=acme["social"], licence_version=acme["version"], fresh=True).allowed
    assert client.patch(f"/api/v1/groups/{group.pk}/policy/", {"on_unknown": "block"},
                        format="json").status_code == 200
    group_evaluate(group=group, today=TODAY)
    blocked = access_check(organisation=acme["social"], licence_version=acme["version"], fresh=True)
    assert (blocked.allowed, blocked.reason) == (False, "unknown_figure")
    declared_figure_record(group=group, month=JUNE_2024, mau=10, evidence="June report", declared_by="counsel")
    group_evaluate(group=group, today=TODAY)
    assert access_check(organisation=acme["social"], licence_version=acme["version"], fresh=True).allowed
    assert GroupPolicy.objects.get(group=group).on_unknown == "block"


def test_a_base_model_released_on_its_own_date_is_tested_on_its_own_month(acme) -> None:
    """Code Llama 70B came out on 2024-01-29, months after the version's date (2023-08-24): its own
    "preceding calendar month" is December 2023. Below in the version's months, over in December 2023: over,
    naming the model and the reading."""
    group = acme["group"]
    code_llama = licence("code-llama")
    LicenceVersion.objects.filter(slug="code-llama").update(mau_threshold=1_000)
    base = BaseModel.objects.get(repo_id="meta-llama/CodeLlama-70b-hf")
    BaseModel.objects.filter(pk=base.pk).update(release_date=dt.date(2024, 1, 29), date_note="70B release")
    product_create(organisation=acme["social"], name="Coder", licence_version=code_llama, actor="test",
                   base_model=base)
    for month in (dt.date(2023, 7, 1), dt.date(2023, 6, 1)):
        declared_figure_record(group=group, month=month, mau=10, evidence="report", declared_by="counsel")
    declared_figure_record(group=group, month=dt.date(2023, 12, 1), mau=5_000, evidence="report",
                           declared_by="counsel")
    group_evaluate(group=group, today=TODAY)
    accurate = ComplianceStatus.objects.get(group=group, licence_version=code_llama, rule="licence_accurate")
    assert (accurate.state, accurate.month) == ("over", dt.date(2023, 12, 1))
    assert "CodeLlama-70b-hf was released on 2024-01-29" in accurate.explanation
    assert "the version date: below" in accurate.explanation


def test_a_group_whose_every_organisation_is_exempt_under_1_b_ii_has_no_verdict(acme) -> None:
    """Clause 1.b.ii: "If you receive Llama Materials ... from a Licensee as part of an integrated end user
    product, then Section 2 of this Agreement will not apply to you." One exempt organisation leaves its
    affiliate a licensee (Section 2 counts the affiliates' products too): the group keeps its verdict, and
    only the exempt organisation's own access says exempt. When both are exempt, no verdict applies."""
    from licensing.services import exemption_record

    group = acme["group"]
    declared_figure_record(group=group, month=JUNE_2024, mau=5_000, evidence="report", declared_by="counsel")
    exemption_record(organisation=acme["cloud"], supplier="Globex Assist", evidence="OEM agreement 2024-03",
                     recorded_by="counsel")
    group_evaluate(group=group, today=TODAY)
    assert status(group, "licence_accurate").state == "over"
    assert not access_check(organisation=acme["social"], licence_version=acme["version"], fresh=True).allowed
    cloud = access_check(organisation=acme["cloud"], licence_version=acme["version"], fresh=True)
    assert (cloud.allowed, cloud.reason) == (True, "exempt")
    exemption_record(organisation=acme["social"], supplier="Globex Assist", evidence="OEM agreement 2024-03",
                     recorded_by="counsel")
    group_evaluate(group=group, today=TODAY)
    accurate = status(group, "licence_accurate")
    assert (accurate.state, accurate.label) == ("exempt", "exempt (1.b.ii)")
    assert "Globex Assist" in accurate.explanation
    body = acme["client"].get(f"/api/v1/groups/{group.pk}/compliance/").json()
    assert {s["label"] for s in body["statuses"]} == {"exempt (1.b.ii)"}


def test_an_unmetered_service_not_built_on_llama_still_leaves_coverage_partial(acme) -> None:
    """Section 2 counts "the products or services made available by or for Licensee, or Licensee's affiliates",
    not only Llama-based ones: a registered, live search service with no licence version that was not metered
    makes the group's below "below (partial coverage)"; once metered, its users count in the figure."""
    group = acme["group"]
    service = product_create(organisation=acme["cloud"], name="Web Search", licence_version=None, actor="test",
                             status=Product.Status.LIVE)
    metering_since_november(acme["chat"])
    activity_ingest(product=acme["chat"], day=DECEMBER_2024.replace(day=5), user_ids=users(0, 99))
    activity_ingest(product=acme["search"], day=DECEMBER_2024.replace(day=6), user_ids=users(0, 9))
    group_evaluate(group=group, today=TODAY)
    partial = status(group)
    assert (partial.label, partial.coverage["unmetered"]) == ("below (partial coverage)", ["Web Search (Acme Cloud)"])
    activity_ingest(product=service, day=DECEMBER_2024.replace(day=8), user_ids=users(500, 1_499))
    group_evaluate(group=group, today=TODAY)
    counted = status(group)
    assert (counted.state, counted.estimate) == ("over", 1_100)  # 100 + 1,000 people, the service's included

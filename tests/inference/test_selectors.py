"""The pool reads the portal's pages go through: deployments, placement, quotas and token use of the caller's
organisations, never another tenant's."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from access.keys import api_key_create
from access.models import Organisation
from inference import selectors
from inference.models import GPU, Deployment, GpuAllocation, GpuQuota, Node, Replica, TokenUsage
from licensing.models import BaseModel
from tests.factories import OrganisationFactory, ProductFactory, licence

pytestmark = pytest.mark.django_db
DAY = dt.date(2026, 11, 20)


def _deployment(organisation: Organisation, name: str, **fields: Any) -> Deployment:
    version = licence()
    return Deployment.objects.create(organisation=organisation, product=ProductFactory(organisation=organisation),
                                     licence_version=version,
                                     base_model=BaseModel.objects.filter(licence_version=version).first(),
                                     model_source="meta-llama/x", served_model_name=name, created_by="t", **fields)


@pytest.fixture
def tenants() -> tuple[Organisation, Organisation]:
    return OrganisationFactory(name="Acme"), OrganisationFactory(name="Globex")


def test_it_lists_and_finds_only_the_callers_deployments(tenants: tuple[Organisation, Organisation]) -> None:
    acme, globex = tenants
    serving = _deployment(acme, "chat")
    gone = _deployment(acme, "old", deleted=True, state="stopped")
    draining = _deployment(acme, "going", deleted=True, state="ready")
    theirs = _deployment(globex, "chat")
    assert set(selectors.deployment_list(organisations=[acme.pk])) == {serving, draining}
    assert set(selectors.deployment_list(organisations=[acme.pk], include_stopped=True)) == {serving, gone, draining}
    assert selectors.deployment_get(organisations=[acme.pk], pk=serving.pk) == serving
    assert selectors.deployment_get(organisations=[acme.pk], pk=theirs.pk) is None
    assert list(selectors.product_deployments(product=serving.product)) == [serving]
    assert list(selectors.product_deployments(product=gone.product)) == []


def test_it_shows_a_tenant_only_the_nodes_its_replicas_run_on(tenants: tuple[Organisation, Organisation]) -> None:
    acme, globex = tenants
    shared, elsewhere = Node.objects.create(name="a", address="10.0.0.1"), Node.objects.create(name="b",
                                                                                               address="10.0.0.2")
    for organisation, node in ((acme, shared), (globex, shared), (globex, elsewhere)):
        replica = Replica.objects.create(deployment=_deployment(organisation, f"d-{node.name}"), ordinal=0,
                                         node=node, state="ready")
        GpuAllocation.objects.create(gpu=GPU.objects.create(node=node, index=GPU.objects.filter(node=node).count(),
                                                            model="H100", memory_mib=1), replica=replica)
    assert list(selectors.node_placement(organisations=[acme.pk])) == [shared]
    assert list(selectors.node_placement_unscoped()) == [shared, elsewhere]
    GpuQuota.objects.create(organisation=globex, max_gpus=4)
    assert selectors.gpu_quotas(organisations=[acme.pk]) == {}
    assert selectors.gpu_quotas(organisations=[globex.pk])[globex.pk].max_gpus == 4


def test_it_sums_the_callers_token_use_per_key_and_deployment_from_the_day_given(
        tenants: tuple[Organisation, Organisation]) -> None:
    acme, globex = tenants
    chat, search = _deployment(acme, "chat"), _deployment(acme, "search")
    key, _ = api_key_create(organisation=acme, name="svc", scopes=["read"], created_by="t")
    other_key, _ = api_key_create(organisation=globex, name="theirs", scopes=["read"], created_by="t")
    for day, deployment, completion in ((DAY, chat, 10), (DAY - dt.timedelta(days=1), chat, 5),
                                        (DAY, search, 100), (DAY - dt.timedelta(days=9), search, 1000)):
        TokenUsage.objects.create(organisation=acme, api_key=key, deployment=deployment, day=day, requests=1,
                                  prompt_tokens=2, completion_tokens=completion)
    TokenUsage.objects.create(organisation=globex, api_key=other_key, deployment=_deployment(globex, "x"), day=DAY,
                              requests=7, completion_tokens=7)
    summary = selectors.token_usage_summary(organisation_ids=[acme.pk], since=DAY - dt.timedelta(days=1))
    assert summary.totals == {"requests": 3, "prompt_tokens": 6, "completion_tokens": 115, "failed_requests": 0}
    assert [(row["api_key__name"], row["completion_tokens"]) for row in summary.by_key] == [("svc", 115)]
    assert [(row["deployment__served_model_name"], row["completion_tokens"], row["requests"])
            for row in summary.by_deployment] == [("search", 100, 1), ("chat", 15, 2)]

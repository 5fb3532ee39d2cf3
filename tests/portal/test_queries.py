"""No page runs a query per row: each main page is read with a little data and again with more of every row it
lists, and must take the same number of queries, under a fixed ceiling."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from access.keys import api_key_create
from access.models import Membership
from governance.compliance.services import group_evaluate
from governance.metering.services import activity_ingest
from governance.models import Alert, DeliveryAttempt, WebhookDelivery, WebhookEndpoint
from inference.models import GPU, Deployment, GpuAllocation, Node, Replica
from licensing.models import BaseModel, LicenceVersion
from licensing.services import licence_accept
from tests.factories import MembershipFactory, OrganisationFactory, ProductFactory
from tests.portal.conftest import Tenancy

pytestmark = pytest.mark.django_db

# Ceilings with room for session, user and membership lookups; the test's point is the equality below.
PAGES = {
    "overview": ("/", "staff", 25),
    "group": ("/groups/{group}/", "owner", 60),
    "products": ("/products/", "owner", 20),
    "product": ("/products/{product}/", "owner", 25),
    "alerts": ("/alerts/", "owner", 20),
    "deployments": ("/deployments/", "owner", 20),
    "deployments (staff)": ("/deployments/", "staff", 20),
    "keys": ("/keys/", "owner", 20),
    "audit": ("/audit/", "owner", 20),
    "members": ("/members/", "owner", 20),
    "webhook": ("/webhooks/{webhook}/", "owner", 20),
    "declarations": ("/groups/{group}/declarations/", "owner", 15),
    "grants (staff)": ("/groups/{group}/grants/", "staff", 15),
    "quotas (staff)": ("/deployments/quotas/", "staff", 15),
    "usage": ("/deployments/usage/", "owner", 15),
    "deployment": ("/deployments/{deployment}/", "owner", 20),
}


def _more_of_everything(tenancy: Tenancy, round_: int) -> None:
    """Rows of every kind the pages list: groups, organisations, products with activity and acceptances,
    alerts, keys, deployments with placed replicas, webhook deliveries with attempts (and audit entries)."""
    org, group = tenancy.organisation, tenancy.organisation.group
    version = LicenceVersion.objects.get(slug="llama-3.1")
    base = BaseModel.objects.filter(licence_version=version).first()
    node = Node.objects.create(name=f"node-{round_}", address="10.0.0.1")
    endpoint = WebhookEndpoint.objects.get(group=group)
    today = timezone.now().date()
    for i in range(3):
        other = OrganisationFactory()  # another group, for staff's overview
        MembershipFactory(organisation=other, role=Membership.Role.OWNER)
        sibling = OrganisationFactory(group=group)
        MembershipFactory(organisation=org, role=Membership.Role.VIEWER)
        product = ProductFactory(organisation=org, name=f"Product {round_}-{i}")
        ProductFactory(organisation=sibling, name=f"Sibling product {round_}-{i}")
        activity_ingest(product=product, day=today, user_ids=[f"r{round_}-{i}-{n}" for n in range(20)])
        activity_ingest(product=product, day=today - dt.timedelta(days=35), user_ids=[f"old-{n}" for n in range(5)])
        licence_accept(organisation=org, licence_version=version, product=product,
                       licence_sha256=version.licence_sha256, aup_version=version.aup_version, accepted_by="test")
        Alert.objects.create(group=group, licence_version=version, level=f"{50 + i}%", kind="raised",
                             month=today.replace(day=1) - dt.timedelta(days=31 * round_), message="test")
        api_key_create(organisation=org, name=f"key {round_}-{i}", scopes=["read"], created_by="test")
        deployment = Deployment.objects.create(organisation=org, product=product, licence_version=version,
                                               base_model=base, model_source="meta-llama/x",
                                               served_model_name=f"d-{round_}-{i}", created_by="test")
        replica = Replica.objects.create(deployment=deployment, ordinal=0, node=node, state="ready")
        GpuAllocation.objects.create(gpu=GPU.objects.create(node=node, index=i, model="H100", memory_mib=1),
                                     replica=replica)
        delivery = WebhookDelivery.objects.create(endpoint=endpoint, event_id=uuid.uuid4(), event_type="alert.test",
                                                  payload={})
        DeliveryAttempt.objects.create(delivery=delivery, attempted_at=timezone.now(), latency_ms=1.0,
                                       status_code=500)
    group_evaluate(group=group)


def _count(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(captured.captured_queries)


@pytest.mark.parametrize("page", list(PAGES))
def test_it_reads_each_page_in_a_fixed_number_of_queries(page: str, tenancy: Tenancy, product: Any, login: Any,
                                                         django_assert_max_num_queries: Any) -> None:
    from governance.webhooks import services as webhook_services

    webhook_services.resolver = lambda host, port, *a, **k: [(2, 1, 6, "", ("93.184.216.34", port))]
    try:
        endpoint, _ = webhook_services.webhook_endpoint_create(group=tenancy.organisation.group,
                                                               url="https://hooks.example.com/x", created_by="t")
    finally:
        import socket

        webhook_services.resolver = socket.getaddrinfo
    path, who, ceiling = PAGES[page]
    first = Deployment.objects.create(organisation=tenancy.organisation, product=product,
                                      licence_version=product.licence_version, model_source="meta-llama/x",
                                      base_model=BaseModel.objects.filter(licence_version=product.licence_version)
                                      .first(), served_model_name="first", created_by="test")
    url = path.format(group=tenancy.organisation.group_id, product=product.pk, webhook=endpoint.pk,
                      deployment=first.pk)
    client = login(who)
    _more_of_everything(tenancy, 1)
    client.get(url)  # warm up: a group's policy row is created on first read, the chain's verification cached
    few = _count(client, url)
    _more_of_everything(tenancy, 2)
    client.get(url)
    many = _count(client, url)
    assert many == few, f"{page}: {few} queries with a few rows, {many} with more"
    with django_assert_max_num_queries(ceiling):
        client.get(url)

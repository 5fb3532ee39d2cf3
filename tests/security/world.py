"""Two tenants for the security suites: each with one object of every kind the API and the portal expose.

Built with the services where they exist (so audit events, hashes and secrets are real) and plain rows where
the row is written by the pool or the gateway. Used by the tests and by bench/fuzz_api.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from access.keys import api_key_create, api_key_revoke
from access.models import ApiKey, Membership, Organisation, Scope
from governance.compliance.services import declaration_propose, declared_figure_record, group_policy_get
from governance.metering.services import activity_ingest
from governance.models import Alert, WebhookDelivery
from governance.webhooks.services import webhook_endpoint_create, webhook_test_event
from inference.models import GPU, Deployment, GatewayLimit, GpuQuota, Node, Replica, ReplicaState, TokenUsage
from licensing.models import BaseModel, LicenceVersion
from licensing.services import (
    grant_record,
    group_admin_appoint,
    invitation_create,
    licence_accept,
    organisation_create,
    product_create,
)

# Every scope alone, then all together: the sweep tries each against the other tenant.
SCOPE_SETS: tuple[tuple[str, ...], ...] = (*((scope,) for scope in Scope.values), tuple(Scope.values))

# A public address literal: no DNS lookup when the endpoint is created (the SSRF tests cover lookups).
WEBHOOK_URL = "https://93.184.216.34/corral-hook"


@dataclass
class Tenant:
    name: str
    organisation: Organisation
    objects: dict[str, Any] = field(default_factory=dict)  # kind -> row
    keys: dict[tuple[str, ...], str] = field(default_factory=dict)  # scopes -> full key
    secrets: list[str] = field(default_factory=list)  # every full key and webhook secret handed out
    users: dict[str, Any] = field(default_factory=dict)  # role -> user

    @property
    def group(self) -> Any:
        return self.organisation.group

    @property
    def admin_key(self) -> str:
        return self.keys[tuple(Scope.values)]


def build_tenant(name: str, *, staff: str = "staff:security-suite") -> Tenant:
    """A tenant in its own affiliate group with a product, acceptance, grant, declaration, policy, alert, webhook
    with a delivery, deployment with a replica, quota, gateway limit, usage, metered activity, keys of every
    scope (plus a revoked and an expired one) and a member of every role."""
    version = LicenceVersion.objects.get(slug="llama-3.1")
    organisation = organisation_create(name=f"{name} Inc", group_name=f"{name} Holdings", actor=staff)
    tenant = Tenant(name=name, organisation=organisation)
    o = tenant.objects
    o["organisation"] = organisation
    o["group"] = organisation.group
    base = BaseModel.objects.filter(licence_version=version).first()
    o["product"] = product_create(organisation=organisation, name=f"{name} Chat", licence_version=version,
                                  actor=staff, base_model=base)
    o["acceptance"] = licence_accept(organisation=organisation, licence_version=version,
                                     licence_sha256=version.licence_sha256, aup_version=version.aup_version,
                                     accepted_by=staff, product=o["product"])
    today = timezone.now().date()
    o["grant"] = grant_record(group=organisation.group, licence_versions=[version], reference=f"META-{name}",
                              granted_on=today, valid_from=today, recorded_by=staff)
    o["declaration"] = declared_figure_record(group=organisation.group, month=today.replace(day=1) - dt.timedelta(days=40),
                                              mau=1234, evidence="security suite", declared_by=staff)
    o["policy"] = group_policy_get(group=organisation.group)
    o["alert"] = Alert.objects.create(group=organisation.group, licence_version=version, level="50%", kind="raised",
                                      month=today.replace(day=1), message=f"{name} alert")
    endpoint, secret = webhook_endpoint_create(group=organisation.group, url=WEBHOOK_URL, created_by=staff)
    tenant.secrets.append(secret)
    o["webhook"] = endpoint
    o["webhook_delivery"] = webhook_test_event(endpoint=endpoint, actor=staff)
    o["quota"] = GpuQuota.objects.create(organisation=organisation, max_gpus=1, max_cpu_replicas=2)
    o["gateway_limit"] = GatewayLimit.objects.create(organisation=organisation, requests_per_minute=100)
    node, _ = Node.objects.get_or_create(name="security-node", defaults={"address": "127.0.0.1", "cpu_only": True,
                                                                         "cpu_slots": 8})
    o["node"] = node
    o["gpu"], _ = GPU.objects.get_or_create(node=node, index=0, defaults={"model": "test", "memory_mib": 1024})
    o["deployment"] = Deployment.objects.create(
        organisation=organisation, product=o["product"], licence_version=version, base_model=base,
        model_source=base.repo_id, served_model_name=f"{name.lower()}-chat", replicas=1, state="ready",
        device=Deployment.Device.CPU, created_by=staff)
    o["replica"] = Replica.objects.create(deployment=o["deployment"], ordinal=0, state=ReplicaState.READY,
                                          endpoint="http://127.0.0.1:9", key_salt=f"salt-{name}", last_health_ok=True)
    for scopes in SCOPE_SETS:
        api_key, full_key = api_key_create(organisation=organisation, name=f"{name} {'+'.join(scopes)}",
                                           scopes=scopes, created_by=staff)
        tenant.keys[scopes] = full_key
        tenant.secrets.append(full_key)
    o["api_key"] = api_key
    revoked, full_key = api_key_create(organisation=organisation, name=f"{name} revoked", scopes=Scope.values,
                                       created_by=staff)
    api_key_revoke(api_key=revoked, revoked_by=staff)
    tenant.keys[("revoked",)] = full_key
    tenant.secrets.append(full_key)
    expired, full_key = api_key_create(organisation=organisation, name=f"{name} expired", scopes=Scope.values,
                                       created_by=staff)
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    tenant.keys[("expired",)] = full_key
    tenant.secrets.append(full_key)
    o["usage"] = TokenUsage.objects.create(organisation=organisation, api_key=api_key, deployment=o["deployment"],
                                           day=today, requests=3, prompt_tokens=30, completion_tokens=40)
    activity_ingest(product=o["product"], day=today, user_ids=[f"{name}-user-{i}" for i in range(5)])
    users = get_user_model().objects
    for role in Membership.Role.values:
        user = users.create_user(username=f"{name.lower()}-{role}", password="correct horse battery staple")
        Membership.objects.create(user=user, organisation=organisation, role=role)
        tenant.users[role] = user
    o["invitation"], token = invitation_create(organisation=organisation, email=f"new@{name.lower()}.example.com",
                                               role=Membership.Role.MEMBER, actor=staff, actor_role="owner")
    tenant.secrets.append(token)
    o["group_admin"] = group_admin_appoint(group=organisation.group, username=tenant.users["member"].username,
                                           actor=staff)
    o["declaration_proposal"] = declaration_propose(
        group=organisation.group, organisation=organisation, month=today.replace(day=1) - dt.timedelta(days=70),
        mau=4321, evidence="security suite", proposed_by=staff)
    assert WebhookDelivery.objects.filter(endpoint=endpoint).exists()
    return tenant

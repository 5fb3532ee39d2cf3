"""Create tenants in the database DATABASE_URL names, the way an operator would, and print them as JSON.

    python tests/faults/tenants.py COUNT SCOPES [UPSTREAM_URL]

COUNT organisations, two per affiliate group, each with an accepted Llama 3.1 licence, one product and one
key with SCOPES (comma-separated). With UPSTREAM_URL each also gets a ready deployment (served model name
``model-<n>``) whose one replica is that URL, and the key's limits are raised so a load run measures the
gateway rather than its refusals. The last line of output is the JSON list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import django

    django.setup()
    from access.keys import api_key_create
    from access.models import ApiKey
    from inference.models import Deployment, GatewayLimit, Replica, ReplicaState, replica_key
    from licensing.models import BaseModel, LicenceVersion
    from licensing.services import licence_accept, organisation_create, product_create

    count, scopes = int(sys.argv[1]), sys.argv[2].split(",")
    upstream = sys.argv[3] if len(sys.argv) > 3 else ""
    version = LicenceVersion.objects.get(slug="llama-3.1")
    base = BaseModel.objects.filter(licence_version=version).first()
    tenants = []
    for n in range(count):
        organisation = organisation_create(name=f"Tenant {n}", group_name=f"Group {n // 2}", actor="faults")
        licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                       aup_version=version.aup_version, accepted_by="faults")
        product = product_create(organisation=organisation, name=f"Product {n}", licence_version=version,
                                 actor="faults")
        _, key = api_key_create(organisation=organisation, name="faults", scopes=scopes, created_by="faults")
        tenant = {"organisation": organisation.pk, "group": organisation.group_id, "product": product.pk,
                  "key": key}
        if upstream:
            deployment = Deployment.objects.create(
                organisation=organisation, product=product, licence_version=version, base_model=base,
                model_source=base.repo_id, served_model_name=f"model-{n}", state="ready", created_by="faults")
            replica = Replica.objects.create(deployment=deployment, ordinal=0, state=ReplicaState.READY,
                                             key_salt=f"faults-{n}", endpoint=upstream, last_health_ok=True)
            GatewayLimit.objects.create(organisation=organisation, requests_per_minute=10_000_000,
                                        tokens_per_minute=1_000_000_000, max_concurrent=10_000)
            ApiKey.objects.filter(prefix=key.split(".")[0]).update(
                requests_per_minute=10_000_000, tokens_per_minute=1_000_000_000, max_concurrent=10_000)
            tenant.update(model=f"model-{n}", deployment=deployment.pk,
                          upstream_key=replica_key(replica.pk, replica.key_salt))
        tenants.append(tenant)
    print(json.dumps(tenants))


if __name__ == "__main__":
    main()

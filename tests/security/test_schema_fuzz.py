"""Schema fuzzing, bounded for every test run: schemathesis with a fixed seed and the keys of two tenants.

The examples, fuzzing and stateful phases run here; the coverage phase (about 4,200 boundary cases per tenant,
four minutes on this machine) runs in the full run with the others, bench/fuzz_api.py (`make fuzz`), against
uvicorn, PostgreSQL and Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator

from tests.inference.gateway_support import ThreadServer
from tests.security.fuzzing import fuzz_config, run_schema
from tests.security.world import build_tenant

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

SEED = 20261128


def test_it_fuzzes_every_operation_with_two_tenants_without_a_failure(settings: Any) -> None:
    settings.DEBUG = False  # the production error pages, not Django's debug page (no tasks run: conftest.py)
    from config.asgi import application

    tenants = [build_tenant("Alpha"), build_tenant("Bravo")]
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    operations = sum(method in ("get", "put", "patch", "post", "delete") for item in paths.values() for method in item)
    results = []
    with ThreadServer(application) as server:  # uvicorn, as in production (Django's live server is much slower)
        for tenant in tenants:
            config = fuzz_config(token=tenant.admin_key, seed=SEED, max_examples=3, max_steps=5,
                                 phases=("examples", "fuzzing", "stateful"))
            schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/schema/", config=config)
            results.append(run_schema(schema, label=f"tenant {tenant.name}"))
    report = "\n".join(r.summary() + "".join(f"\n  {line}" for line in r.failures + r.errors) for r in results)
    print(report)
    for result in results:
        assert result.operations_tested == operations, report  # every one, the two key revocations too
        assert result.cases_by_phase.get("fuzzing", 0) >= 85 and result.cases_by_phase.get("stateful", 0) > 0, report
        assert result.failures == [] and result.errors == [], report

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from config.celery import app as celery_app
from tests.factories import OrganisationFactory, ProductFactory, make_key


@pytest.fixture(autouse=True)
def _celery_eager() -> Any:
    """Tasks run in the test's process; the broker itself is exercised in tests/test_infrastructure.py."""
    # The app reads Django settings with the CELERY_ namespace, so the override must use the namespaced names.
    celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_TASK_EAGER_PROPAGATES=True)
    yield
    celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=False)


@pytest.fixture(autouse=True)
def _no_key_cache(settings: Any) -> None:
    """Tests change key rows directly; tests/governance/test_key_cache.py covers the cache itself."""
    settings.API_KEY_CACHE_SECONDS = 0


@pytest.fixture
def client_for() -> Callable[..., APIClient]:
    """An API client authenticated with a new key of the given organisation and scopes."""

    def build(organisation: Any, scopes: list[str] | None = None, **kwargs: Any) -> APIClient:
        client = APIClient()
        key = make_key(organisation, scopes or ["read", "write", "admin"], **kwargs)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        client.api_key = key  # type: ignore[attr-defined]
        return client

    return build


@pytest.fixture
def owner_org(db: Any) -> Any:
    return OrganisationFactory(name="Owner Org")


@pytest.fixture
def outsider_org(db: Any) -> Any:
    return OrganisationFactory(name="Outsider Org")


@pytest.fixture
def product(owner_org: Any) -> Any:
    return ProductFactory(organisation=owner_org, name="Owner Chat")

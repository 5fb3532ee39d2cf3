"""The per-process cache of API key rows: bounded staleness, immediate effect of revoking here."""

from __future__ import annotations

import pytest
from django.utils import timezone

from access.keys import api_key_authenticate, api_key_revoke
from access.keys import key_cache as _key_cache
from access.models import ApiKey
from tests.factories import OrganisationFactory, make_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def cached(settings):
    settings.API_KEY_CACHE_SECONDS = 5
    _key_cache.clear()
    yield
    _key_cache.clear()


def test_it_authenticates_from_the_cache_without_a_query(cached, django_assert_num_queries) -> None:
    key = make_key(OrganisationFactory(), ["read"])
    api_key_authenticate(key)
    with django_assert_num_queries(0):
        assert api_key_authenticate(key).prefix == key.split(".")[0]


def test_a_revocation_in_this_process_takes_effect_at_once(cached) -> None:
    key = make_key(OrganisationFactory(), ["read"])
    api_key = api_key_authenticate(key)
    api_key_revoke(api_key=api_key, revoked_by="test")
    with pytest.raises(Exception, match="revoked"):
        api_key_authenticate(key)


def test_a_revocation_elsewhere_takes_effect_when_the_entry_expires(cached, monkeypatch) -> None:
    key = make_key(OrganisationFactory(), ["read"])
    api_key_authenticate(key)
    ApiKey.objects.update(revoked_at=timezone.now())  # as another process would
    api_key_authenticate(key)  # still cached: accepted for at most API_KEY_CACHE_SECONDS
    import access.keys as keys

    real = keys.time.monotonic
    monkeypatch.setattr(keys.time, "monotonic", lambda: real() + 6)
    with pytest.raises(Exception, match="revoked"):
        api_key_authenticate(key)


def test_a_wrong_secret_is_refused_even_when_the_prefix_is_cached(cached) -> None:
    key = make_key(OrganisationFactory(), ["read"])
    api_key_authenticate(key)
    with pytest.raises(Exception, match="Invalid API key"):
        api_key_authenticate(key.split(".")[0] + ".wrong")

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


def test_threads_filling_the_cache_at_once_never_break_a_lookup() -> None:
    """The REST API's threads, the fast path's and the gateway's key threads all store here: the eviction of a
    full cache must not meet another thread's insert ("dictionary changed size during iteration"). Threads are
    made to switch every microsecond so that the two meet within a few evictions."""
    import sys
    import threading

    cache = _key_cache.__class__()
    cache.max_entries = 5000
    errors: list[BaseException] = []

    def fill(worker: str) -> None:
        try:
            for n in range(60_000):
                cache._store(f"crl_{worker}{n:07d}", None, 1000)  # nothing expires: a full cache is cleared
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever a store raised
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=fill, args=(worker,)) for worker in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []

"""API keys: created with the secret shown once, authenticated by hash, revoked once."""

from __future__ import annotations

import datetime as dt
import hmac

import pytest
from django.utils import timezone
from pytest_django.fixtures import SettingsWrapper

from access.keys import KeyRejected, api_key_authenticate, api_key_create, api_key_revoke
from access.models import ApiKey, AuditEvent, Organisation
from tests.factories import OrganisationFactory, ProductFactory

pytestmark = pytest.mark.django_db


def create(organisation: Organisation | None = None, **kwargs: object) -> tuple[ApiKey, str]:
    fields: dict[str, object] = {"name": "ci", "scopes": ["read", "ingest"], "created_by": "alice"}
    fields.update(kwargs)
    return api_key_create(organisation=organisation or OrganisationFactory(), **fields)  # type: ignore[arg-type]


# api_key_create


def test_it_stores_only_a_hash_of_the_key() -> None:
    api_key, full_key = create()
    prefix, _, secret = full_key.partition(".")

    row = ApiKey.objects.filter(pk=api_key.pk).values().get()
    assert len(secret) >= 32
    assert all(secret not in str(value) for value in row.values()), row
    assert len(row["key_hash"]) == 64
    assert row["prefix"] == prefix
    assert prefix.startswith("crl_")


def test_it_keeps_the_secret_out_of_the_audit_log() -> None:
    api_key, full_key = create(name="ingest bot")
    secret = full_key.partition(".")[2]

    [event] = AuditEvent.objects.filter(action="api_key.created", object_id=str(api_key.pk))
    assert event.data["prefix"] == api_key.prefix
    assert event.data["scopes"] == ["read", "ingest"]
    assert secret not in str(event.data)


def test_it_gives_every_key_its_own_prefix_and_secret() -> None:
    organisation = OrganisationFactory()

    keys = [create(organisation)[1] for _ in range(5)]

    assert len({key.partition(".")[0] for key in keys}) == 5
    assert len(set(keys)) == 5


def test_it_removes_repeated_scopes() -> None:
    api_key, _ = create(scopes=["read", "write", "read"])

    assert api_key.scopes == ["read", "write"]


@pytest.mark.parametrize("scopes", [["read", "root"], ["READ"], []])
def test_it_refuses_unknown_or_missing_scopes(scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="scope"):
        create(scopes=scopes)

    assert not ApiKey.objects.exists()


def test_it_refuses_another_organisations_product() -> None:
    with pytest.raises(ValueError, match="another organisation"):
        create(OrganisationFactory(), product=ProductFactory())

    assert not ApiKey.objects.exists()


def test_it_refuses_an_expiry_in_the_past() -> None:
    with pytest.raises(ValueError, match="expires_at"):
        create(expires_at=timezone.now() - dt.timedelta(seconds=1))

    assert not ApiKey.objects.exists()


# api_key_authenticate


def test_it_authenticates_the_right_key() -> None:
    api_key, full_key = create()

    assert api_key_authenticate(full_key).pk == api_key.pk


def test_it_rejects_a_wrong_secret_behind_a_right_prefix() -> None:
    api_key, full_key = create()
    prefix, _, secret = full_key.partition(".")
    wrong = f"{prefix}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"

    with pytest.raises(KeyRejected, match="^Invalid API key.$"):
        api_key_authenticate(wrong)
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at is None


@pytest.mark.parametrize(
    "presented",
    ["", "garbage", "crl_", "crl_0000.", "crl_deadbeef.nope", "Bearer crl_deadbeef.x", "xyz_12345678.secret",
     "crl_" + "a" * 40 + ".secret"],
)
def test_it_rejects_garbage(presented: str) -> None:
    create()

    with pytest.raises(KeyRejected, match="^Invalid API key.$"):
        api_key_authenticate(presented)


def test_it_rejects_another_keys_secret_under_this_prefix() -> None:
    mine, _ = create()
    _, their_key = create()

    with pytest.raises(KeyRejected):
        api_key_authenticate(f"{mine.prefix}.{their_key.partition('.')[2]}")


def test_it_rejects_a_revoked_key() -> None:
    api_key, full_key = create()
    api_key_revoke(api_key=api_key, revoked_by="bob")

    with pytest.raises(KeyRejected, match="revoked"):
        api_key_authenticate(full_key)


def test_it_rejects_an_expired_key() -> None:
    api_key, full_key = create(expires_at=timezone.now() + dt.timedelta(days=1))
    ApiKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    with pytest.raises(KeyRejected, match="expired"):
        api_key_authenticate(full_key)


def test_it_accepts_a_key_until_it_expires() -> None:
    api_key, full_key = create(expires_at=timezone.now() + dt.timedelta(minutes=5))

    assert api_key_authenticate(full_key).pk == api_key.pk


def test_it_rejects_a_key_of_a_suspended_organisation() -> None:
    organisation = OrganisationFactory()
    _, full_key = create(organisation)
    Organisation.objects.filter(pk=organisation.pk).update(status=Organisation.Status.SUSPENDED)

    with pytest.raises(KeyRejected, match="suspended"):
        api_key_authenticate(full_key)


def test_it_records_the_first_use() -> None:
    api_key, full_key = create()
    before = timezone.now()

    api_key_authenticate(full_key)

    last_used_at = ApiKey.objects.get(pk=api_key.pk).last_used_at
    assert last_used_at is not None and before <= last_used_at <= timezone.now()


@pytest.mark.parametrize(("used_ago", "rewritten"), [(dt.timedelta(minutes=4), False), (dt.timedelta(minutes=6), True)])
def test_it_rewrites_last_use_at_most_once_per_resolution(
    settings: SettingsWrapper, used_ago: dt.timedelta, rewritten: bool
) -> None:
    settings.API_KEY_LAST_USED_RESOLUTION = dt.timedelta(minutes=5)
    api_key, full_key = create()
    earlier = timezone.now() - used_ago
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=earlier)

    authenticated = api_key_authenticate(full_key)

    stored = ApiKey.objects.get(pk=api_key.pk).last_used_at
    assert (stored != earlier) is rewritten
    assert stored == authenticated.last_used_at
    if rewritten:
        assert stored > earlier + dt.timedelta(minutes=5)


def test_it_does_not_rewrite_last_use_on_back_to_back_requests() -> None:
    api_key, full_key = create()
    api_key_authenticate(full_key)
    first = ApiKey.objects.get(pk=api_key.pk).last_used_at

    api_key_authenticate(full_key)
    api_key_authenticate(full_key)

    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == first


def test_it_leaves_last_use_to_a_concurrent_request_that_recorded_it_first(monkeypatch: pytest.MonkeyPatch) -> None:
    api_key, full_key = create()
    written_by_the_other_request = timezone.now()
    compare_digest = hmac.compare_digest

    def compare_while_another_request_records_its_use(a: str, b: str) -> bool:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=written_by_the_other_request)
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_while_another_request_records_its_use)

    api_key_authenticate(full_key)

    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == written_by_the_other_request


# api_key_revoke


def test_it_revokes_once_and_audits_once() -> None:
    api_key, _ = create()

    first = api_key_revoke(api_key=api_key, revoked_by="bob")
    revoked_at = first.revoked_at
    second = api_key_revoke(api_key=ApiKey.objects.get(pk=api_key.pk), revoked_by="carol")

    assert revoked_at is not None
    assert (second.revoked_at, second.revoked_by) == (revoked_at, "bob")
    assert second.is_active is False
    events = AuditEvent.objects.filter(action="api_key.revoked", object_id=str(api_key.pk))
    assert [(event.actor, event.data) for event in events] == [("bob", {"prefix": api_key.prefix})]


def test_it_revokes_only_the_key_it_is_given() -> None:
    organisation = OrganisationFactory()
    revoked, _ = create(organisation)
    kept, kept_key = create(organisation)

    api_key_revoke(api_key=revoked, revoked_by="bob")

    assert api_key_authenticate(kept_key).pk == kept.pk

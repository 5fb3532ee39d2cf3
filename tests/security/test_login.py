"""Password guessing (OWASP API2): log-ins at /login/ and /admin/login/ are throttled per account and per client
address by django-axes; API keys are not (docs/reliability.md, "Security")."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from access.models import AuditEvent, Membership
from tests.security.world import Tenant, build_tenant

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"  # tests/security/world.py gives every member this one


@pytest.fixture
def tenant() -> Tenant:
    return build_tenant("Alpha")


def log_in(client: Client, path: str, username: str, password: str, **extra: str) -> Any:
    return client.post(path, {"username": username, "password": password, "next": "/"}, **extra)


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_it_refuses_the_right_password_after_30_wrong_ones_until_the_cool_off_ends(tenant: Tenant, path: str,
                                                                                     settings: Any) -> None:
    """30 wrong passwords and then the right one all went through; now the right one is refused (429, with the
    reason on the login page) until the cool-off has passed."""
    user = tenant.users[Membership.Role.OWNER]
    if path.startswith("/admin/"):
        get_user_model().objects.filter(pk=user.pk).update(is_staff=True)
    client = Client()
    statuses = [log_in(client, path, user.username, f"wrong {i}").status_code for i in range(30)]
    assert statuses[: settings.AXES_FAILURE_LIMIT - 1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    assert set(statuses[settings.AXES_FAILURE_LIMIT - 1:]) == {429}

    refused = log_in(client, path, user.username, PASSWORD)
    assert refused.status_code == 429 and "_auth_user_id" not in client.session
    page = refused.content.decode()
    assert "Too many failed log-ins for this account or from this address" in page
    assert "paused for 15 minutes" in page and 'name="password"' in page  # the login page itself

    # The cool-off runs from the last failure: 15 minutes later the right password works.
    AccessAttempt.objects.update(attempt_time=dt.datetime.now(dt.UTC) - settings.AXES_COOLOFF_TIME
                                 - dt.timedelta(seconds=1))
    accepted = log_in(client, path, user.username, PASSWORD)
    assert accepted.status_code == 302 and client.session["_auth_user_id"] == str(user.pk)


def test_it_records_one_audit_entry_per_lockout_in_the_accounts_organisation(tenant: Tenant, settings: Any) -> None:
    user = tenant.users[Membership.Role.VIEWER]
    for i in range(30):
        log_in(Client(), "/login/", user.username, f"wrong {i}", REMOTE_ADDR="203.0.113.7")
    events = AuditEvent.objects.filter(action="login.locked_out")
    assert [(e.organisation_id, e.actor, e.object_id) for e in events] == [
        (tenant.organisation.pk, "login:203.0.113.7", str(user.pk))]
    assert events[0].data == {"username": user.username, "ip_address": "203.0.113.7", "path": "/login/",
                              "failures": settings.AXES_FAILURE_LIMIT, "cooloff_minutes": 15}


def test_an_administrator_lifts_a_lockout_at_once(tenant: Tenant) -> None:
    user = tenant.users[Membership.Role.OWNER]
    client = Client()
    for i in range(30):
        log_in(client, "/login/", user.username, f"wrong {i}")
    assert log_in(client, "/login/", user.username, PASSWORD).status_code == 429
    call_command("axes_reset_username", user.username)
    call_command("axes_reset_ip", "127.0.0.1")
    assert log_in(client, "/login/", user.username, PASSWORD).status_code == 302


def test_it_locks_an_account_whatever_address_the_guesses_come_from(tenant: Tenant, settings: Any) -> None:
    user = tenant.users[Membership.Role.OWNER]
    for i in range(settings.AXES_FAILURE_LIMIT):
        log_in(Client(), "/login/", user.username, f"wrong {i}", REMOTE_ADDR=f"198.51.100.{i + 1}")
    assert log_in(Client(), "/login/", user.username, PASSWORD, REMOTE_ADDR="192.0.2.1").status_code == 429


def test_it_locks_an_address_whatever_accounts_it_guesses(tenant: Tenant, settings: Any) -> None:
    for i in range(settings.AXES_FAILURE_LIMIT):
        log_in(Client(), "/login/", f"nobody-{i}", "wrong", REMOTE_ADDR="203.0.113.9")
    owner = tenant.users[Membership.Role.OWNER]
    assert log_in(Client(), "/login/", owner.username, PASSWORD, REMOTE_ADDR="203.0.113.9").status_code == 429
    assert log_in(Client(), "/login/", owner.username, PASSWORD, REMOTE_ADDR="203.0.113.10").status_code == 302


def test_api_keys_and_open_sessions_are_not_throttled(tenant: Tenant) -> None:
    """A lockout stops password log-ins only: the locked account's organisation keeps its API keys, from the
    locked address too, and a session opened before keeps working."""
    user = tenant.users[Membership.Role.OWNER]
    signed_in = Client()
    signed_in.force_login(user)
    for i in range(30):
        log_in(Client(), "/login/", user.username, f"wrong {i}")
    api = APIClient(REMOTE_ADDR="127.0.0.1")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.admin_key}")
    assert [api.get("/api/v1/products/").status_code for _ in range(10)] == [200] * 10
    assert signed_in.get("/").status_code == 200


def test_behind_a_trusted_proxy_it_reads_the_address_the_proxy_appended(tenant: Tenant, settings: Any) -> None:
    """Behind one proxy (TRUSTED_PROXY_COUNT=1, the default with TRUST_X_FORWARDED_PROTO) every request comes
    from the proxy's address: the client's is the last one in X-Forwarded-For. Entries to its left are the
    client's own writing, so a guesser cannot step around its lockout by sending another one each time."""
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    for i in range(settings.AXES_FAILURE_LIMIT):
        log_in(Client(), "/login/", f"nobody-{i}", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 203.0.113.5",
               **proxy)
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.5"}
    owner = tenant.users[Membership.Role.OWNER]
    guesser = log_in(Client(), "/login/", owner.username, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy)
    assert guesser.status_code == 429
    # Another client behind the same proxy is not locked out with it.
    other = log_in(Client(), "/login/", owner.username, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.20", **proxy)
    assert other.status_code == 302


def test_without_a_trusted_proxy_a_forwarded_header_is_ignored(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 0
    log_in(Client(), "/login/", "nobody", "wrong", HTTP_X_FORWARDED_FOR="192.0.2.1", REMOTE_ADDR="203.0.113.1")
    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == ["203.0.113.1"]

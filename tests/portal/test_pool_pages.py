"""The platform lead's pages: quotas, a deployment's live state, replica logs, token usage; confirmation before
revoke/delete/remove; date and number inputs that survive an unchanged save."""

from __future__ import annotations

import datetime as dt
import re
from html import unescape
from typing import Any

import pytest
from django.utils import timezone

from access.keys import api_key_create
from access.models import ApiKey, Membership
from inference.models import Deployment, GpuQuota, Node, Replica, TokenUsage, replica_key
from licensing.models import BaseModel, Product
from portal import forms
from tests.portal.conftest import Tenancy

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_reconciler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)


@pytest.fixture
def deployment(tenancy: Tenancy, product: Product) -> Deployment:
    return Deployment.objects.create(
        organisation=tenancy.organisation, product=product, licence_version=product.licence_version,
        base_model=BaseModel.objects.filter(licence_version=product.licence_version).first(),
        model_source="meta-llama/x", served_model_name="acme-chat", replicas=1, created_by="setup")


# --- quotas ---------------------------------------------------------------------------------------------------


def test_it_shows_quotas_and_lets_staff_change_them(tenancy: Tenancy, login: Any, deployment: Deployment) -> None:
    org = tenancy.organisation
    GpuQuota.objects.create(organisation=org, max_gpus=8, max_cpu_replicas=2)
    body = login("viewer").get("/deployments/quotas/").content.decode()
    assert "Acme Social" in body and "1 / 8" in body and "0 / 2" in body and "Globex" not in body
    assert 'name="organisation"' not in body
    response = login("staff").post("/deployments/quotas/", {"organisation": org.pk, f"q{org.pk}-max_gpus": "16",
                                                            f"q{org.pk}-max_cpu_replicas": "3"})
    assert response.status_code == 302
    quota = GpuQuota.objects.get(organisation=org)
    assert (quota.max_gpus, quota.max_cpu_replicas) == (16, 3)


def test_it_refuses_quota_changes_to_all_but_staff(tenancy: Tenancy, login: Any) -> None:
    org = tenancy.organisation
    data = {"organisation": org.pk, f"q{org.pk}-max_gpus": "99", f"q{org.pk}-max_cpu_replicas": "0"}
    response = login("owner").post("/deployments/quotas/", data)
    assert response.status_code == 403 and "set by Corral staff" in response.content.decode()
    bad = login("staff").post("/deployments/quotas/", {**data, f"q{org.pk}-max_gpus": "-1"})
    assert bad.status_code == 400 and "greater than or equal to 0" in bad.content.decode()
    assert not GpuQuota.objects.exists()


# --- live state -----------------------------------------------------------------------------------------------


def test_it_answers_the_live_state_until_the_deployment_settles(tenancy: Tenancy, login: Any,
                                                                 deployment: Deployment) -> None:
    client = login("viewer")
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'data-settled="false"' in page and "live.js" in page
    answer = client.get(f"/deployments/{deployment.pk}/status/").json()
    assert answer["state"] == "pending" and answer["settled"] is False and "pending" in answer["html"]
    Deployment.objects.filter(pk=deployment.pk).update(state="ready")
    Replica.objects.create(deployment=deployment, ordinal=0, state="ready")
    answer = client.get(f"/deployments/{deployment.pk}/status/").json()
    assert answer["settled"] is True and "#0" in answer["html"]
    assert login("outsider").get(f"/deployments/{deployment.pk}/status/").status_code == 404


def test_it_answers_the_deployment_lists_live_table(tenancy: Tenancy, login: Any, deployment: Deployment) -> None:
    client = login("viewer")
    page = client.get("/deployments/?stopped=1").content.decode()
    assert 'data-settled="false"' in page and 'data-status-url="/deployments/?stopped=1&amp;format=live"' in page
    answer = client.get("/deployments/?stopped=1&format=live").json()
    assert answer["settled"] is False and "acme-chat" in answer["html"] and "<html" not in answer["html"]
    Deployment.objects.filter(pk=deployment.pk).update(state="ready")
    assert client.get("/deployments/?format=live").json()["settled"] is True
    assert "acme-chat" not in login("outsider").get("/deployments/?format=live").json()["html"]


# --- logs -----------------------------------------------------------------------------------------------------


@pytest.fixture
def log_cache(settings: Any, tmp_path: Any) -> Any:
    """A cache the workers and the web processes share (Redis in production, files here), new for each test."""
    from django.core.cache import cache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": str(tmp_path / "cache")}}
    return cache


@pytest.fixture
def logged_replica(deployment: Deployment, settings: Any, tmp_path: Any, log_cache: Any) -> Replica:
    settings.INFERENCE_LOG_DIR = tmp_path
    node = Node.objects.create(name="gpu-1", address="127.0.0.1")
    replica = Replica.objects.create(deployment=deployment, ordinal=0, state="starting", key_salt="abc", node=node,
                                     log_path=str(tmp_path / "replica.log"))
    secret = replica_key(replica.pk, "abc")
    (tmp_path / "replica.log").write_text("".join(f"line {i}\n" for i in range(500)) + f"INFO api_key={secret}\n")
    return replica


def _log_url(replica: Replica) -> str:
    return f"/deployments/{replica.deployment_id}/replicas/{replica.pk}/log/"


def test_it_shows_a_replicas_last_log_lines_with_the_time_they_were_read(
        tenancy: Tenancy, login: Any, logged_replica: Replica) -> None:
    from inference.services import replica_log_cached

    # opening the page asks the replica's worker for a read (run at once here: Celery is eager in tests)
    body = login("viewer").get(_log_url(logged_replica)).content.decode()
    assert '">line 301\nline 302\n' in body and "line 300\n" not in body  # the last 200 lines, oldest first
    secret = replica_key(logged_replica.pk, "abc")
    assert secret not in body and "api_key=[vLLM key]" in body
    read_at = dt.datetime.fromisoformat(replica_log_cached(replica=logged_replica)[0]["read_at"])
    assert re.search(rf"Read at {read_at:%H:%M:%S} UTC \([01] s ago\)", body)
    assert 'data-settled="true"' in body and "Reading the log" not in body


def test_it_reads_the_log_again_when_asked_and_the_page_picks_the_answer_up(
        tenancy: Tenancy, login: Any, logged_replica: Replica, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any) -> None:
    from inference import queue, tasks

    client = login("viewer")
    client.get(_log_url(logged_replica))
    with open(tmp_path / "replica.log", "a") as log:
        log.write("INFO a newer line\n")
    assert "a newer line" not in client.get(_log_url(logged_replica)).content.decode()  # the cached answer

    asked: list[tuple[int, int, str | None]] = []
    monkeypatch.setattr(queue, "replica_log_read_soon",
                        lambda replica_id, organisation_id, *, queue: asked.append((replica_id, organisation_id,
                                                                                    queue)) or True)
    assert client.post(_log_url(logged_replica), {}).status_code == 302
    assert asked == [(logged_replica.pk, tenancy.organisation.pk, None)]
    assert client.post(_log_url(logged_replica), {}).status_code == 302
    assert len(asked) == 1  # a read is already awaited
    body = client.get(_log_url(logged_replica)).content.decode()
    assert "Reading the log: asked 0 s ago" in body and 'data-settled="false"' in body
    assert "line 499" in body  # the last answer stays on the page meanwhile
    live = client.get(_log_url(logged_replica) + "?format=live").json()
    assert live["settled"] is False and "a newer line" not in live["html"]

    tasks.read_replica_log(logged_replica.pk, tenancy.organisation.pk)  # the worker answers
    live = client.get(_log_url(logged_replica) + "?format=live").json()
    assert live["settled"] is True and "INFO a newer line" in live["html"] and "Reading the log" not in live["html"]


def test_it_refuses_a_log_refresh_without_its_csrf_token(tenancy: Tenancy, logged_replica: Replica) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(tenancy.users["viewer"])
    assert client.post(_log_url(logged_replica), {}).status_code == 403


def test_it_shows_and_reads_no_log_of_another_tenants_replica(tenancy: Tenancy, login: Any, logged_replica: Replica,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from inference import queue

    asked: list[int] = []
    monkeypatch.setattr(queue, "replica_log_read_soon", lambda replica_id, *a, **k: asked.append(replica_id) or True)
    outsider = login("outsider")
    assert outsider.get(_log_url(logged_replica)).status_code == 404
    assert outsider.get(_log_url(logged_replica) + "?format=live").status_code == 404
    assert outsider.post(_log_url(logged_replica), {}).status_code == 404
    assert asked == []
    # a replica of another of the viewer's deployments is not reached through this one's URL either
    other = Replica.objects.create(deployment=Deployment.objects.create(
        organisation=tenancy.outsider_org, product=logged_replica.deployment.product,
        licence_version=logged_replica.deployment.licence_version, base_model=logged_replica.deployment.base_model,
        model_source="meta-llama/x", served_model_name="their-chat", replicas=1, created_by="setup"), ordinal=0)
    assert login("viewer").get(f"/deployments/{logged_replica.deployment_id}/replicas/{other.pk}/log/").status_code == 404
    assert asked == []


def test_it_reads_the_log_in_the_web_process_on_a_single_host_without_a_shared_cache(
        tenancy: Tenancy, login: Any, logged_replica: Replica, settings: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any) -> None:
    from inference import queue

    # no REDIS_URL: each process has its own cache, so a worker's answer would never reach the page
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"replica-log-{tmp_path.name}"}}
    asked: list[int] = []
    monkeypatch.setattr(queue, "replica_log_read_soon", lambda replica_id, *a, **k: asked.append(replica_id) or True)
    client = login("viewer")
    assert "line 499" in client.get(_log_url(logged_replica)).content.decode()
    with open(tmp_path / "replica.log", "a") as log:
        log.write("INFO a newer line\n")
    assert client.post(_log_url(logged_replica), {}).status_code == 302
    body = client.get(_log_url(logged_replica)).content.decode()
    assert "INFO a newer line" in body and 'data-settled="true"' in body
    assert asked == []


def test_it_reads_no_file_outside_the_log_directory(tenancy: Tenancy, login: Any, deployment: Deployment,
                                                    settings: Any, tmp_path: Any, log_cache: Any) -> None:
    settings.INFERENCE_LOG_DIR = tmp_path / "replicas"
    (tmp_path / "replicas").mkdir()
    elsewhere = tmp_path / "secret.txt"
    elsewhere.write_text("do not show\n")
    node = Node.objects.create(name="gpu-1", address="127.0.0.1")
    replica = Replica.objects.create(deployment=deployment, ordinal=0, log_path=str(tmp_path / "replicas/../secret.txt"),
                                     node=node)
    body = login("viewer").get(_log_url(replica)).content.decode()
    assert "do not show" not in body
    assert "No log lines: The recorded log file is outside INFERENCE_LOG_DIR, so it is not read." in body


# --- usage ----------------------------------------------------------------------------------------------------


def test_it_shows_token_usage_per_key_and_per_deployment(tenancy: Tenancy, login: Any,
                                                         deployment: Deployment) -> None:
    key, _ = api_key_create(organisation=tenancy.organisation, name="chat-backend", scopes=["inference"],
                            created_by="setup")
    today = timezone.now().date()
    for day, tokens in ((today, 1_200), (today - dt.timedelta(days=3), 800), (today - dt.timedelta(days=60), 5)):
        TokenUsage.objects.create(organisation=tenancy.organisation, api_key=key, deployment=deployment, day=day,
                                  requests=2, prompt_tokens=10, completion_tokens=tokens)
    body = login("viewer").get("/deployments/usage/?days=30").content.decode()
    assert "chat-backend" in body and "acme-chat" in body
    # completion tokens of the total, the key and the deployment over 30 days (not the 60-day-old row)
    assert body.count(">2,000<") == 3
    week = login("viewer").get("/deployments/usage/?days=1").content.decode()
    assert week.count(">1,200<") == 3
    assert "chat-backend" not in login("outsider").get("/deployments/usage/").content.decode()
    bad = login("viewer").get("/deployments/usage/?days=12")
    assert bad.status_code == 400 and "days must be one of 1, 7, 30, 90; got '12'" in bad.content.decode()


# --- confirmations --------------------------------------------------------------------------------------------


def test_it_asks_before_revoking_a_key_deleting_a_deployment_or_removing_a_member(
        tenancy: Tenancy, login: Any, deployment: Deployment) -> None:
    key, _ = api_key_create(organisation=tenancy.organisation, name="k", scopes=["read"], created_by="setup")
    member = Membership.objects.get(organisation=tenancy.organisation, user__username="member")
    client = login("owner")
    for url, button in ((f"/keys/{key.pk}/revoke/", "Revoke key"),
                        (f"/deployments/{deployment.pk}/delete/", "Delete deployment"),
                        (f"/members/{member.pk}/remove/", "Remove member")):
        page = client.get(url)
        assert page.status_code == 200 and f">{button}</button>" in page.content.decode(), url
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    assert not Deployment.objects.get(pk=deployment.pk).deleted
    assert Membership.objects.filter(pk=member.pk).exists()
    assert f'href="/keys/{key.pk}/revoke/"' in client.get("/keys/").content.decode()
    client.post(f"/keys/{key.pk}/revoke/")
    client.post(f"/deployments/{deployment.pk}/delete/")
    client.post(f"/members/{member.pk}/remove/")
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert Deployment.objects.get(pk=deployment.pk).deleted
    assert not Membership.objects.filter(pk=member.pk).exists()


def test_it_refuses_the_confirmation_page_to_a_role_that_cannot_act(tenancy: Tenancy, login: Any,
                                                                     deployment: Deployment) -> None:
    member = Membership.objects.get(organisation=tenancy.organisation, user__username="member")
    assert login("viewer").get(f"/deployments/{deployment.pk}/delete/").status_code == 403
    assert login("member").get(f"/members/{member.pk}/remove/").status_code == 403
    assert login("outsider").get(f"/deployments/{deployment.pk}/delete/").status_code == 404


# --- inputs that round-trip -----------------------------------------------------------------------------------


def _form_values(html: str) -> dict[str, Any]:
    """What a browser would submit from the page's first stacked form: inputs, selects, textareas."""
    form = re.search(r'<form class="stack[^"]*" method="post".*?</form>', html, re.S).group(0)
    data: dict[str, Any] = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]+)"', tag)
        kind = re.search(r'type="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and (kind is None or kind.group(1) not in ("checkbox", "radio") or "checked" in tag):
            data[name.group(1)] = unescape(value.group(1)) if value else ""
    for name, body in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.search(r'<option value="([^"]*)"[^>]*selected', body)
        data[name] = unescape(chosen.group(1)) if chosen else ""
    for name, body in re.findall(r'<textarea name="([^"]+)"[^>]*>(.*?)</textarea>', form, re.S):
        data[name] = unescape(body).lstrip("\n")
    return data


def test_it_keeps_a_launch_date_through_an_unchanged_save(tenancy: Tenancy, login: Any, product: Product) -> None:
    Product.objects.filter(pk=product.pk).update(launch_date=dt.date(2023, 10, 16))
    client = login("member")
    page = client.get(f"/products/{product.pk}/edit/").content.decode()
    assert 'type="date" name="launch_date" value="2023-10-16"' in page
    data = _form_values(page)
    assert data["launch_date"] == "2023-10-16"
    assert client.post(f"/products/{product.pk}/edit/", data).status_code == 302
    assert Product.objects.get(pk=product.pk).launch_date == dt.date(2023, 10, 16)


def test_it_renders_every_date_input_as_iso(settings: Any) -> None:
    settings.LANGUAGE_CODE = "en-gb"  # a locale whose date format is 16/10/2023
    day = dt.date(2023, 10, 16)
    for form_class, name in ((forms.ProductForm, "launch_date"), (forms.GrantForm, "valid_from"),
                             (forms.AuditFilterForm, "since")):
        field = form_class.base_fields[name]
        html = field.widget.render(name, day)
        assert 'type="date"' in html and 'value="2023-10-16"' in html, form_class
    month = forms.DeclarationForm.base_fields["month"].widget.render("month", dt.date(2024, 11, 1))
    assert 'type="month"' in month and 'value="2024-11"' in month

from __future__ import annotations

from typing import Any

import pytest
from celery.app.task import Task
from django.apps import apps

from governance.webhooks import services as webhook_services


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """A member of every role in two tenants: the production hasher's slowness would cost seconds."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_background_work(monkeypatch: Any) -> None:
    """No task runs: the reconciler would start vLLM for the tenants' deployments and webhook test events would
    be sent out. These suites test what the API and the portal answer and store."""
    monkeypatch.setattr(Task, "apply_async", lambda *args, **kwargs: None)


@pytest.fixture(autouse=True)
def _public_dns(monkeypatch: Any) -> None:
    """Webhook hosts resolve to a public address unless a test says otherwise; nothing is sent anywhere."""
    monkeypatch.setattr(webhook_services, "resolver", lambda host, port, **kw: [(2, 1, 6, "", ("93.184.216.34", port))])


# Columns that legitimately change when the other tenant merely authenticates or signs in.
_VOLATILE = {("access", "apikey", "last_used_at"), ("auth", "user", "last_login")}
# Sessions, and django-axes' records of sign-ins and failed log-ins (tests/security/test_login.py).
_SKIPPED_MODELS = {("sessions", "session"), ("axes", "accesslog"), ("axes", "accessattempt"),
                   ("axes", "accessfailurelog"), ("axes", "accessattemptexpiration")}


def database_snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every model, as comparable tuples: equal before and after means nothing was written."""
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    for model in apps.get_models():
        meta = model._meta
        if (meta.app_label, meta.model_name) in _SKIPPED_MODELS:
            continue
        columns = [f.attname for f in meta.concrete_fields
                   if (meta.app_label, meta.model_name, f.attname) not in _VOLATILE]
        rows = model._base_manager.order_by("pk").values_list(*columns)
        snapshot[meta.label] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]
    return snapshot


def snapshot_diff(before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    changes = []
    for label, rows in before.items():
        if rows != after.get(label):
            gone = [r for r in rows if r not in after[label]][:3]
            new = [r for r in after[label] if r not in rows][:3]
            changes.append(f"{label}: -{gone} +{new}")
    return changes

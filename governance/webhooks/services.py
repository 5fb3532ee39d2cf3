"""Writes of the governance app: webhook endpoints, and the delivery of signed events to them.

Deliveries are at least once: a delivery is claimed with a short lease, POSTed with no database transaction
open, and its outcome recorded afterwards. Receivers deduplicate on the event id (docs/webhooks.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import socket
import time
import uuid
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from access.audit import audit_record
from access.models import AffiliateGroup
from governance import queue
from governance.models import Alert, DeliveryAttempt, GroupPolicy, WebhookDelivery, WebhookEndpoint
from governance.webhooks import signing as webhooks

logger = logging.getLogger(__name__)

USER_AGENT = "Corral-Webhooks/1"
# The one name lookup used both to vet a URL and to connect to it; tests replace it with a fake.
resolver: webhooks.Resolver = socket.getaddrinfo

_URL_MAX_LENGTH = cast(int, WebhookEndpoint._meta.get_field("url").max_length)  # a URLField always has one
_ERROR_MAX_LENGTH = DeliveryAttempt._meta.get_field("error").max_length
_PREFIX_LENGTH = WebhookEndpoint._meta.get_field("secret_prefix").max_length


# --- endpoints --------------------------------------------------------------------------------------------


def webhook_secret(endpoint: WebhookEndpoint) -> str:
    """The endpoint's current signing secret, derived from the server key and the endpoint's salt."""
    return webhooks.derive_secret(settings.WEBHOOK_SIGNING_KEY, endpoint.pk, endpoint.secret_salt)


def _validate_url(url: str) -> None:
    if len(url) > _URL_MAX_LENGTH:
        raise ValidationError({"url": f"The URL is longer than {_URL_MAX_LENGTH} characters."})
    try:
        webhooks.check_url_target(url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS, resolver=resolver)
    except webhooks.UnsafeWebhookURL as exc:
        raise ValidationError({"url": str(exc)}) from exc


def _audit_data(endpoint: WebhookEndpoint) -> dict[str, Any]:
    # Only the origin: a path may itself be a credential (Slack incoming-webhook URLs are).
    parts = urlsplit(endpoint.url)
    return {
        "origin": f"{parts.scheme}://{parts.netloc}",
        "description": endpoint.description,
        "slack_format": endpoint.slack_format,
        "secret_prefix": endpoint.secret_prefix,
    }


def _set_new_secret(endpoint: WebhookEndpoint) -> str:
    endpoint.secret_salt = secrets.token_hex(32)
    secret = webhook_secret(endpoint)
    endpoint.secret_prefix = secret[:_PREFIX_LENGTH]
    endpoint.save(update_fields=["secret_salt", "secret_prefix"])
    return secret


def webhook_endpoint_create(
    *,
    group: AffiliateGroup,
    url: str,
    created_by: str,
    description: str = "",
    slack_format: bool = False,
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint and return it with its signing secret, which is not stored and is shown once.

    Raises ValidationError({"url": ...}) when the URL is not a safe webhook target.
    """
    url = url.strip()
    _validate_url(url)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            group=group, url=url, description=description, slack_format=slack_format, created_by=created_by,
            secret_salt="", secret_prefix="",
        )
        secret = _set_new_secret(endpoint)  # the secret depends on the primary key, known only now
        audit_record(action="webhook_endpoint.created", actor=created_by, group=group, obj=endpoint,
                     data=_audit_data(endpoint))
    return endpoint, secret


def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint, actor: str) -> str:
    """Replace the endpoint's secret and return the new one. The old secret stops working at once."""
    with transaction.atomic():
        previous_prefix = endpoint.secret_prefix
        secret = _set_new_secret(endpoint)
        audit_record(action="webhook_endpoint.secret_rotated", actor=actor, group=endpoint.group, obj=endpoint,
                     data={**_audit_data(endpoint), "previous_secret_prefix": previous_prefix})
    return secret


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, actor: str, **changes: Any) -> WebhookEndpoint:
    """Change an endpoint's description, format or active flag. Its URL is fixed: a new URL is a new
    endpoint (created, checked against SSRF, and given its own secret)."""
    allowed = {"description", "slack_format", "active"}
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValidationError({field: "This field cannot be changed." for field in unknown})
    with transaction.atomic():
        for field, value in changes.items():
            setattr(endpoint, field, value)
        endpoint.save(update_fields=list(changes))
        audit_record(action="webhook_endpoint.updated", actor=actor, group=endpoint.group, obj=endpoint,
                     data={**_audit_data(endpoint), "changed": changes})
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: str) -> None:
    """Delete the endpoint with its deliveries and their attempt log."""
    with transaction.atomic():
        audit_record(action="webhook_endpoint.deleted", actor=actor, group=endpoint.group, obj=endpoint,
                     data=_audit_data(endpoint))
        endpoint.delete()


# --- events -----------------------------------------------------------------------------------------------


def webhook_enqueue(
    *, endpoint: WebhookEndpoint, event_type: str, payload: dict[str, Any], alert: Alert | None = None
) -> WebhookDelivery:
    """Store one event for one endpoint, due now. `payload["id"]` (a UUID) becomes the delivery's event id.

    Nothing is sent here: the caller schedules `deliver_webhook` on commit, and the beat task
    `webhook_deliver_due` picks up whatever it misses.
    """
    return WebhookDelivery.objects.create(
        endpoint=endpoint, alert=alert, event_id=uuid.UUID(str(payload["id"])), event_type=event_type,
        payload=payload, status=WebhookDelivery.Status.PENDING, next_attempt_at=timezone.now(),
    )


def _site_link(path: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}{path}"


_EVENT_NAMESPACE = uuid.UUID("5f0c3f0e-8d7a-4c1e-9a55-6b1f1d2c0a77")


def _alert_payload(alert: Alert, endpoint_id: int) -> dict[str, Any]:
    version = alert.licence_version
    return webhooks.event_payload(
        # One event id per alert and endpoint: a retried dispatch cannot create a second delivery (the id is
        # unique), and a receiver can deduplicate on it.
        event_id=str(uuid.uuid5(_EVENT_NAMESPACE, f"alert:{alert.pk}:endpoint:{endpoint_id}")),
        event_type=f"alert.{alert.kind}",
        group={"id": alert.group_id, "name": alert.group.name},
        version={"slug": version.slug, "name": version.name} if version is not None else None,
        level=alert.level,
        kind=alert.kind,
        figures=alert.figures,
        link=_site_link(f"/admin/governance/alert/{alert.pk}/change/"),
        created_at=alert.created_at.isoformat(),
        message=alert.message,
    )


def webhook_event_for_alert(*, alert: Alert) -> list[WebhookDelivery]:
    """One delivery per active endpoint of the alert's group, each with its own event id.

    Safe to call twice: endpoints that already have a delivery of this alert are skipped. Returns nothing when
    the group's policy turns webhooks off.
    """
    policy = GroupPolicy.objects.filter(group_id=alert.group_id).first()
    if policy is not None and not policy.webhooks_enabled:
        return []
    endpoints = (
        WebhookEndpoint.objects.filter(group_id=alert.group_id, active=True)
        .exclude(deliveries__alert=alert)
        .order_by("id")
    )
    deliveries = []
    for endpoint in endpoints:
        payload = _alert_payload(alert, endpoint.pk)
        try:
            with transaction.atomic():
                deliveries.append(webhook_enqueue(endpoint=endpoint, event_type=payload["type"], payload=payload,
                                                  alert=alert))
        except IntegrityError:  # a concurrent dispatch of the same alert created it first
            continue
    return deliveries


def webhook_test_event(*, endpoint: WebhookEndpoint, actor: str) -> WebhookDelivery:
    """Queue an "alert.test" event for one endpoint, so a tenant can check their receiver end to end."""
    payload = webhooks.event_payload(
        event_id=str(uuid.uuid4()),
        event_type="alert.test",
        group={"id": endpoint.group_id, "name": endpoint.group.name},
        version=None,
        level="test",
        kind=Alert.Kind.TEST.value,
        figures={},
        link=_site_link(f"/admin/governance/webhookendpoint/{endpoint.pk}/change/"),
        created_at=timezone.now().isoformat(),
        message=f"Test event requested by {actor}. No action is needed.",
    )
    return webhook_enqueue(endpoint=endpoint, event_type="alert.test", payload=payload)


def webhook_test_send(*, endpoint: WebhookEndpoint, actor: str) -> WebhookDelivery:
    """A test event, tried at once by a worker (the API's and the portal's "send test event")."""
    delivery = webhook_test_event(endpoint=endpoint, actor=actor)
    queue.webhook_delivery_soon(delivery.pk)  # views run in autocommit: the worker sees the row
    return delivery


# --- delivery ---------------------------------------------------------------------------------------------


def _lease_seconds() -> float:
    # httpx applies the timeout to connecting, writing and reading separately; beyond this a worker is gone.
    return 4 * float(settings.WEBHOOK_TIMEOUT_SECONDS) + 30


def _claim(delivery_id: int, now: dt.datetime) -> WebhookDelivery | None:
    """Take a pending, due delivery for one attempt, or None if it is done, not due or held by another worker.

    In one short transaction: count the attempt and move next_attempt_at past the HTTP call (a lease), so the
    call runs with no transaction open, and a worker that dies mid-call leaves a delivery that is retried
    when the lease runs out.
    """
    skip_locked = bool(connection.features.has_select_for_update_skip_locked)
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update(skip_locked=skip_locked).filter(pk=delivery_id).first()
        if (
            delivery is None
            or delivery.status != WebhookDelivery.Status.PENDING
            or delivery.next_attempt_at is None
            or delivery.next_attempt_at > now
        ):
            return None
        lease_until = now + dt.timedelta(seconds=_lease_seconds())
        # Conditional on what was read: where row locks do not exist (SQLite), a second worker matches 0 rows.
        claimed = WebhookDelivery.objects.filter(
            pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at=delivery.next_attempt_at
        ).update(next_attempt_at=lease_until, attempts=F("attempts") + 1)
        if claimed != 1:
            return None
    delivery.attempts += 1
    delivery.next_attempt_at = lease_until
    return delivery


def _post(endpoint: WebhookEndpoint, event: dict[str, Any], event_type: str) -> tuple[int | None, str]:
    """POST the signed event to the endpoint; returns (status code, "") or (None, what went wrong)."""
    try:
        addresses = webhooks.vetted_addresses(
            endpoint.url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS, resolver=resolver
        )
    except webhooks.UnsafeWebhookURL as exc:  # checked again now: DNS may have changed since creation
        return None, f"refused, not sent: {exc}"
    secret = webhook_secret(endpoint)
    body = json.dumps(webhooks.slack_payload(event) if endpoint.slack_format else event,
                      separators=(",", ":"), ensure_ascii=False).encode()
    url = httpx.URL(endpoint.url)
    timestamp = int(time.time())
    headers = {
        "Host": url.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        webhooks.SIGNATURE_HEADER: webhooks.sign(secret, body, timestamp),
        "Corral-Event-Id": str(event["id"]),
        "Corral-Event-Type": event_type,
        **webhooks.standard_webhooks_headers(secret, body, message_id=str(event["id"]), timestamp=timestamp),
    }
    # Connect to the address just vetted rather than resolving the name again (DNS rebinding); TLS still
    # checks the certificate against the name. trust_env=False: no proxy from the environment either.
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    try:
        with httpx.Client(timeout=float(settings.WEBHOOK_TIMEOUT_SECONDS), follow_redirects=False,
                          trust_env=False) as client:
            request = client.build_request("POST", url.copy_with(host=str(addresses[0])), content=body,
                                           headers=headers, extensions=extensions)
            # Status only: the body is not read, so a receiver cannot make us download anything.
            response = client.send(request, stream=True)
            response.close()
            return response.status_code, ""
    except Exception as exc:  # anything the remote side causes is an attempt that failed, never a crash
        error = f"{type(exc).__name__}: {exc}".replace(secret, "[secret]")
        return None, error


def _record(
    delivery: WebhookDelivery, *, started: dt.datetime, latency_ms: float, status_code: int | None, error: str,
    give_up: bool = False,
) -> None:
    finished = started + dt.timedelta(milliseconds=latency_ms)
    pending = WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING)
    with transaction.atomic():
        DeliveryAttempt.objects.create(delivery=delivery, attempted_at=started, status_code=status_code,
                                       latency_ms=latency_ms, error=error[:_ERROR_MAX_LENGTH])
        if status_code is not None and 200 <= status_code < 300:
            pending.update(status=WebhookDelivery.Status.DELIVERED, delivered_at=finished, next_attempt_at=None,
                           last_status_code=status_code)
            return
        delay = None if give_up else webhooks.next_attempt_delay(delivery.attempts)
        # Only while our lease holds: if it ran out, another worker owns the delivery's schedule now.
        ours = pending.filter(next_attempt_at=delivery.next_attempt_at)
        if delay is None:
            ours.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None, last_status_code=status_code)
        else:
            ours.update(next_attempt_at=finished + dt.timedelta(seconds=delay), last_status_code=status_code)


def _attempt(delivery_id: int, now: dt.datetime) -> bool:
    delivery = _claim(delivery_id, now)
    if delivery is None:
        return False
    endpoint = WebhookEndpoint.objects.select_related("group").get(pk=delivery.endpoint_id)
    if not endpoint.active:
        _record(delivery, started=now, latency_ms=0.0, status_code=None,
                error="endpoint is disabled; not sent", give_up=True)
        return True
    started = time.monotonic()
    status_code, error = _post(endpoint, delivery.payload, delivery.event_type)
    latency_ms = (time.monotonic() - started) * 1000
    _record(delivery, started=now, latency_ms=latency_ms, status_code=status_code, error=error)
    logger.info("webhook delivery %s attempt %d to endpoint %s: %s", delivery.pk, delivery.attempts,
                endpoint.pk, status_code or error)
    return True


def webhook_attempt(*, delivery_id: int, now: dt.datetime | None = None) -> WebhookDelivery:
    """Make one attempt at a delivery if it is pending and due (at `now`, default the current time), and return
    it as it stands afterwards. Safe to call twice or from several workers: only one of them sends.

    2xx marks it delivered; anything else (another status, a refused URL, a network error) schedules the next
    attempt from RETRY_SCHEDULE, or marks it failed when the schedule is exhausted. Redirects are not
    followed. Raises WebhookDelivery.DoesNotExist if there is no such delivery.
    """
    _attempt(delivery_id, now or timezone.now())
    return WebhookDelivery.objects.get(pk=delivery_id)


def webhook_deliver_due(*, now: dt.datetime | None = None, limit: int = 50) -> int:
    """Attempt up to `limit` pending deliveries due at `now`, oldest first; returns how many were attempted
    (0: no work)."""
    now = now or timezone.now()
    due = (
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(_attempt(delivery_id, now) for delivery_id in list(due))

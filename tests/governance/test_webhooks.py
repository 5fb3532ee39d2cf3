"""Webhooks: signed deliveries to a real local receiver, retries, the verifier, and SSRF refusals."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.utils import timezone
from pytest_django.fixtures import SettingsWrapper

from access.models import AffiliateGroup, AuditEvent
from governance.models import Alert, DeliveryAttempt, GroupPolicy, Heartbeat, WebhookDelivery, WebhookEndpoint
from governance.webhooks import services as webhook_services
from governance.webhooks import signing as webhooks
from governance.webhooks.services import (
    webhook_attempt,
    webhook_deliver_due,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_rotate_secret,
    webhook_event_for_alert,
    webhook_secret,
    webhook_test_event,
)
from governance.webhooks.signing import (
    RETRY_SCHEDULE,
    MalformedSignatureHeader,
    SignatureMismatch,
    TimestampOutOfTolerance,
    UnsafeWebhookURL,
    check_url_target,
    derive_secret,
    event_payload,
    next_attempt_delay,
    sign,
    slack_payload,
    standard_webhooks_secret,
    verify,
    vetted_addresses,
)
from tests.factories import GroupFactory, licence

# --- a real HTTP receiver ---------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


Step = int | str | tuple[int, dict[str, str]] | Callable[[Received], int]


@dataclass
class Receiver:
    """Answers each request with the next step of `script` (then `default`), like a tenant's endpoint would.

    A step is a status code, (status, headers), "close" (hang up without answering), "hang" (answer nothing
    for `hang_seconds`) or a callable returning a status. With `secret` set it verifies every request with
    `verify` and answers 400 to one that fails, as the docs tell tenants to.
    """

    port: int = 0
    script: list[Step] = field(default_factory=list)
    default: Step = 200
    secret: str | None = None
    hang_seconds: float = 1.0
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    rejections: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = Received(self.command, self.path, dict(self.headers.items()), body)
        receiver.requests.append(received)
        step = receiver.script.pop(0) if receiver.script else receiver.default
        if step == "close":
            self.close_connection = True
            return
        if step == "hang":
            time.sleep(receiver.hang_seconds)
            self.close_connection = True
            return
        status, headers = step if isinstance(step, tuple) else (step, {})
        if callable(status):
            status = status(received)
        if receiver.secret is not None and 200 <= status < 300:
            try:
                verify(receiver.secret, body, received.header("Corral-Signature") or "", now=int(time.time()))
            except webhooks.SignatureError as exc:
                receiver.rejections.append(str(exc))
                status = 400
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_POST = do_GET = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.receiver.connections += 1
        return True


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = Receiver(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.receiver
    server.shutdown()
    server.server_close()


@pytest.fixture
def allow_private(settings: SettingsWrapper) -> None:
    """The local receiver is on 127.0.0.1, which only an operator's switch allows."""
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOK_TIMEOUT_SECONDS = 2


def resolving_to(*addresses: str) -> Callable[..., list[tuple[Any, ...]]]:
    """A getaddrinfo stand-in answering every name with `addresses`."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


def make_alert(group: AffiliateGroup, **fields: Any) -> Alert:
    values: dict[str, Any] = {
        "licence_version": licence("llama-3.1"),
        "level": "90%",
        "kind": Alert.Kind.RAISED,
        "month": dt.date(2025, 6, 1),
        "rule": "continuous",
        "figures": {"estimate": 640_000_000, "lower": 630_000_000, "upper": 650_000_000,
                    "threshold": 700_000_000},
        "message": "Group MAU reached 90% of the 700M threshold.",
    }
    values.update(fields)
    return Alert.objects.create(group=group, **values)


def endpoint_for(receiver: Receiver, **fields: Any) -> tuple[WebhookEndpoint, str]:
    values: dict[str, Any] = {"group": GroupFactory(), "url": receiver.url, "created_by": "alice"}
    values.update(fields)
    endpoint, secret = webhook_endpoint_create(**values)
    receiver.secret = secret
    return endpoint, secret


def alert_delivery(endpoint: WebhookEndpoint) -> WebhookDelivery:
    [delivery] = webhook_event_for_alert(alert=make_alert(endpoint.group))
    return delivery


# --- signatures (no database) -----------------------------------------------------------------------------

SECRET = "whsec_test-secret"
BODY = b'{"id":"1","type":"alert.raised"}'
T = 1_750_000_000


def test_it_signs_the_timestamp_dot_raw_body_with_hmac_sha256() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()

    assert sign(SECRET, BODY, T) == f"t={T},v1={expected}"


def test_it_verifies_a_fresh_correct_signature() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, T), now=T + 5) is None


def test_it_rejects_a_forged_signature() -> None:
    forged = f"t={T},v1={hmac.new(b'guess', f'{T}.'.encode() + BODY, hashlib.sha256).hexdigest()}"

    with pytest.raises(SignatureMismatch, match="No v1 signature matches"):
        verify(SECRET, BODY, forged, now=T)


def test_it_rejects_a_signature_made_with_another_secret() -> None:
    with pytest.raises(SignatureMismatch):
        verify(SECRET, BODY, sign("whsec_other", BODY, T), now=T)


def test_it_rejects_an_altered_body() -> None:
    with pytest.raises(SignatureMismatch):
        verify(SECRET, BODY.replace(b"raised", b"recovered"), sign(SECRET, BODY, T), now=T)


def test_it_rejects_a_timestamp_more_than_5_minutes_old() -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, T - 300), now=T)  # exactly 5 minutes is still accepted

    with pytest.raises(TimestampOutOfTolerance, match="301 s old"):
        verify(SECRET, BODY, sign(SECRET, BODY, T - 301), now=T)


def test_it_rejects_a_timestamp_more_than_5_minutes_in_the_future() -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, T + 300), now=T)

    with pytest.raises(TimestampOutOfTolerance, match="future"):
        verify(SECRET, BODY, sign(SECRET, BODY, T + 301), now=T)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", f"t={T}", "v1=" + "0" * 64, f"t=soon,v1={'0' * 64}", f"t={T},t={T},v1={'0' * 64}",
     f"t=-{T},v1={'0' * 64}"],
)
def test_it_rejects_a_malformed_header(header: str) -> None:
    with pytest.raises(MalformedSignatureHeader):
        verify(SECRET, BODY, header, now=T)


def test_it_accepts_any_of_several_v1_signatures_during_a_rotation() -> None:
    old, new = sign("whsec_old", BODY, T), sign(SECRET, BODY, T)
    both = f"{old},{new.split(',')[1]}"

    verify(SECRET, BODY, both, now=T)
    verify("whsec_old", BODY, both, now=T)
    with pytest.raises(SignatureMismatch):
        verify("whsec_third", BODY, both, now=T)


def test_it_derives_a_distinct_secret_per_key_endpoint_and_salt() -> None:
    secret = derive_secret("server-key", 7, "salt")

    assert secret == derive_secret("server-key", 7, "salt")
    assert secret.startswith("whsec_") and len(secret) == 6 + 43
    assert len({secret, derive_secret("other-key", 7, "salt"), derive_secret("server-key", 8, "salt"),
                derive_secret("server-key", 7, "pepper")}) == 4


# --- retry schedule ---------------------------------------------------------------------------------------


def test_it_backs_off_exponentially_for_more_than_24_hours() -> None:
    assert list(RETRY_SCHEDULE) == sorted(RETRY_SCHEDULE)
    assert RETRY_SCHEDULE[0] == 10 and RETRY_SCHEDULE[-1] == 8 * 3600
    assert sum(RETRY_SCHEDULE) >= 24 * 3600
    assert [next_attempt_delay(n) for n in (1, 2, 3)] == [10, 30, 60]
    assert next_attempt_delay(len(RETRY_SCHEDULE)) == 8 * 3600
    assert next_attempt_delay(len(RETRY_SCHEDULE) + 1) is None


# --- SSRF (no database: a fake resolver answers every name with a public address) ------------------------

PUBLIC = resolving_to("93.184.216.34")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hooks", "loopback"),
        ("https://localhost/hooks", "loopback"),
        ("https://LOCALHOST./hooks", "loopback"),
        ("https://[::1]/hooks", "loopback"),
        ("https://10.1.2.3/hooks", "private"),
        ("https://172.16.0.1/hooks", "private"),
        ("https://192.168.1.1/hooks", "private"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.1.1/hooks", "link-local"),
        ("https://0.0.0.0/hooks", "unspecified"),
        ("https://[fd00::1]/hooks", "private"),
        ("https://[::ffff:127.0.0.1]/hooks", "loopback"),
        ("https://[::ffff:10.0.0.1]/hooks", "private"),
        ("https://[2002:7f00:1::]/hooks", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("https://[fe80::1]/hooks", "link-local"),
        ("https://224.0.0.1/hooks", "multicast"),
        ("https://100.64.0.1/hooks", "non-public"),
        ("https://2130706433/hooks", "numeric"),
        ("https://0x7f.1/hooks", "numeric"),
        ("https://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("ftp://hooks.example.com/hooks", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://hooks.example.com/hooks", "https"),
        ("https://user:pass@hooks.example.com/hooks", "credentials"),
        ("https://token@hooks.example.com/hooks", "credentials"),
        ("https:///hooks", "no host"),
        ("https://hooks.example.com:99999/hooks", "cannot be parsed"),
    ],
)
def test_it_refuses_an_unsafe_url(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookURL, match=reason):
        check_url_target(url, allow_private=False, resolver=PUBLIC)


def test_it_refuses_a_hostname_resolving_to_a_private_address() -> None:
    with pytest.raises(UnsafeWebhookURL, match=r"hooks.example.com \(10.0.0.5\) is a private address"):
        check_url_target("https://hooks.example.com/x", allow_private=False,
                         resolver=resolving_to("93.184.216.34", "10.0.0.5"))


def test_it_refuses_a_hostname_resolving_to_an_ipv4_mapped_loopback_address() -> None:
    with pytest.raises(UnsafeWebhookURL, match="loopback"):
        check_url_target("https://hooks.example.com/x", allow_private=False,
                         resolver=resolving_to("::ffff:7f00:1"))


def test_it_refuses_a_hostname_that_does_not_resolve() -> None:
    def fail(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UnsafeWebhookURL, match="cannot be resolved"):
        check_url_target("https://nowhere.example.com/x", allow_private=False, resolver=fail)


def test_it_accepts_a_public_address() -> None:
    assert check_url_target("https://hooks.example.com/corral", allow_private=False, resolver=PUBLIC) is None
    assert [str(a) for a in vetted_addresses("https://hooks.example.com/c", allow_private=False,
                                             resolver=PUBLIC)] == ["93.184.216.34"]
    check_url_target("https://93.184.216.34:8443/corral", allow_private=False, resolver=PUBLIC)


def test_it_accepts_private_addresses_and_http_when_the_operator_allows_them() -> None:
    for url in ("http://127.0.0.1:8080/hooks", "http://localhost/hooks", "https://[fd00::1]/", "http://10.0.0.2/"):
        check_url_target(url, allow_private=True, resolver=resolving_to("127.0.0.1"))


def test_it_refuses_cloud_metadata_even_when_private_networks_are_allowed() -> None:
    with pytest.raises(UnsafeWebhookURL, match="metadata"):
        check_url_target("http://169.254.169.254/latest/", allow_private=True)
    with pytest.raises(UnsafeWebhookURL, match="metadata"):
        check_url_target("http://metadata.google.internal/", allow_private=True, resolver=PUBLIC)
    with pytest.raises(UnsafeWebhookURL, match="metadata"):
        check_url_target("http://hooks.example.com/", allow_private=True, resolver=resolving_to("169.254.169.254"))


# --- payloads ---------------------------------------------------------------------------------------------


def sample_event(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": "6f1c2a1e-0000-4000-8000-000000000001", "event_type": "alert.raised",
        "group": {"id": 3, "name": "Acme <Group> & Co"}, "version": {"slug": "llama-3.1", "name": "Llama 3.1"},
        "level": "90%", "kind": "raised", "figures": {"estimate": 640_000_000},
        "link": "https://corral.example.com/admin/governance/alert/9/change/",
        "created_at": "2025-06-14T08:00:00+00:00", "message": "MAU reached 90% <of> the threshold.",
    }
    fields.update(overrides)
    return event_payload(**fields)


def test_it_builds_the_event_json() -> None:
    assert sample_event() == {
        "id": "6f1c2a1e-0000-4000-8000-000000000001", "type": "alert.raised",
        "created_at": "2025-06-14T08:00:00+00:00", "group": {"id": 3, "name": "Acme <Group> & Co"},
        "version": {"slug": "llama-3.1", "name": "Llama 3.1"}, "level": "90%", "kind": "raised",
        "figures": {"estimate": 640_000_000}, "message": "MAU reached 90% <of> the threshold.",
        "link": "https://corral.example.com/admin/governance/alert/9/change/",
    }


def test_it_builds_a_slack_message_with_text_and_blocks() -> None:
    message = slack_payload(sample_event())

    assert set(message) == {"text", "blocks"}
    assert message["text"] == ("Corral raised alert: Acme &lt;Group&gt; &amp; Co · Llama 3.1 · level 90%: "
                               "MAU reached 90% &lt;of&gt; the threshold.")
    assert [block["type"] for block in message["blocks"]] == ["header", "section", "section", "context"]
    assert message["blocks"][1]["text"] == {"type": "mrkdwn", "text": "MAU reached 90% &lt;of&gt; the threshold."}
    assert {"type": "mrkdwn", "text": "*Group*\nAcme &lt;Group&gt; &amp; Co"} in message["blocks"][2]["fields"]
    context = message["blocks"][3]["elements"][0]["text"]
    assert "<https://corral.example.com/admin/governance/alert/9/change/|Open in Corral>" in context


def test_it_marks_a_test_event_in_the_slack_message() -> None:
    message = slack_payload(sample_event(kind="test", event_type="alert.test", version=None))

    assert message["text"].startswith("[test] ")
    assert {"type": "mrkdwn", "text": "*Version*\n—"} in message["blocks"][2]["fields"]


# --- endpoints --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_creates_an_endpoint_and_returns_its_secret_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_services, "resolver", PUBLIC)
    group = GroupFactory()

    endpoint, secret = webhook_endpoint_create(group=group, url=" https://hooks.example.com/corral ",
                                               created_by="alice", description="Pager")

    endpoint.refresh_from_db()
    assert endpoint.url == "https://hooks.example.com/corral"
    assert secret == webhook_secret(endpoint) and secret.startswith("whsec_")
    assert endpoint.secret_prefix == secret[:12] and len(endpoint.secret_salt) == 64
    [event] = AuditEvent.objects.filter(action="webhook_endpoint.created", object_id=str(endpoint.pk))
    assert event.group_id == group.pk and event.actor == "alice"
    assert event.data["origin"] == "https://hooks.example.com" and secret not in json.dumps(event.data)


@pytest.mark.django_db
def test_it_refuses_to_create_an_endpoint_for_an_unsafe_url(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False

    with pytest.raises(ValidationError) as raised:
        webhook_endpoint_create(group=GroupFactory(), url="https://127.0.0.1/hooks", created_by="alice")

    assert "loopback" in raised.value.message_dict["url"][0]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
def test_it_rotates_the_secret_so_only_the_new_one_verifies(allow_private: None, receiver: Receiver) -> None:
    endpoint, old_secret = endpoint_for(receiver)

    new_secret = webhook_endpoint_rotate_secret(endpoint=endpoint, actor="bob")
    receiver.secret = new_secret  # the tenant pastes the new secret into their receiver
    delivery = webhook_attempt(delivery_id=webhook_test_event(endpoint=endpoint, actor="bob").pk)

    assert new_secret != old_secret and delivery.status == WebhookDelivery.Status.DELIVERED
    endpoint.refresh_from_db()
    assert endpoint.secret_prefix == new_secret[:12]
    request = receiver.requests[0]
    verify(new_secret, request.body, request.header("Corral-Signature") or "", now=int(time.time()))
    with pytest.raises(SignatureMismatch):
        verify(old_secret, request.body, request.header("Corral-Signature") or "", now=int(time.time()))
    assert AuditEvent.objects.filter(action="webhook_endpoint.secret_rotated", object_id=str(endpoint.pk)).exists()


@pytest.mark.django_db
def test_it_deletes_an_endpoint_with_its_deliveries_and_audits_it(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    webhook_test_event(endpoint=endpoint, actor="alice")

    webhook_endpoint_delete(endpoint=endpoint, actor="bob")

    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()
    assert AuditEvent.objects.filter(action="webhook_endpoint.deleted", actor="bob").count() == 1


# --- events -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_queues_one_event_per_active_endpoint_of_the_alert_group(
    allow_private: None, receiver: Receiver, settings: SettingsWrapper
) -> None:
    settings.SITE_URL = "https://corral.example.com/"
    first, _ = endpoint_for(receiver)
    second, _ = endpoint_for(receiver, group=first.group)
    disabled, _ = endpoint_for(receiver, group=first.group)
    WebhookEndpoint.objects.filter(pk=disabled.pk).update(active=False)
    endpoint_for(receiver)  # another group's
    alert = make_alert(first.group)

    deliveries = webhook_event_for_alert(alert=alert)

    assert [d.endpoint_id for d in deliveries] == [first.pk, second.pk]
    assert len({d.event_id for d in deliveries}) == 2
    payload = deliveries[0].payload
    assert payload["id"] == str(deliveries[0].event_id) and deliveries[0].event_type == payload["type"]
    assert payload["type"] == "alert.raised" and deliveries[0].alert_id == alert.pk
    assert payload["group"] == {"id": first.group.pk, "name": first.group.name}
    assert payload["version"] == {"slug": "llama-3.1", "name": alert.licence_version.name}
    assert (payload["level"], payload["kind"], payload["figures"]) == ("90%", "raised", alert.figures)
    assert payload["link"] == f"https://corral.example.com/admin/governance/alert/{alert.pk}/change/"
    assert payload["message"] == alert.message
    assert all(d.status == "pending" and d.next_attempt_at <= timezone.now() for d in deliveries)
    assert webhook_event_for_alert(alert=alert) == []  # safe to run twice


@pytest.mark.django_db
def test_it_queues_a_recovery_with_its_own_type_and_no_version(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)

    [delivery] = webhook_event_for_alert(alert=make_alert(endpoint.group, kind="recovered", licence_version=None))

    assert delivery.event_type == "alert.recovered" and delivery.payload["version"] is None


@pytest.mark.django_db
def test_it_queues_nothing_when_the_group_policy_turns_webhooks_off(
    allow_private: None, receiver: Receiver
) -> None:
    endpoint, _ = endpoint_for(receiver)
    GroupPolicy.objects.update_or_create(group=endpoint.group, defaults={"webhooks_enabled": False})

    assert webhook_event_for_alert(alert=make_alert(endpoint.group)) == []
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_it_sends_a_test_event(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)

    queued = webhook_test_event(endpoint=endpoint, actor="alice")
    delivery = webhook_attempt(delivery_id=queued.pk)

    assert (queued.event_type, queued.alert_id) == ("alert.test", None)
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    body = json.loads(receiver.requests[0].body)
    assert (body["type"], body["kind"], body["group"]["id"]) == ("alert.test", "test", endpoint.group.pk)
    assert receiver.requests[0].header("Corral-Event-Type") == "alert.test"


# --- delivery ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_delivers_a_signed_event_the_receiver_verifies(allow_private: None, receiver: Receiver) -> None:
    endpoint, secret = endpoint_for(receiver)
    queued = alert_delivery(endpoint)

    delivery = webhook_attempt(delivery_id=queued.pk)

    assert receiver.rejections == []
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/hooks")
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == "Corral-Webhooks/1"
    assert request.header("Corral-Event-Id") == str(queued.event_id)
    assert request.header("Corral-Event-Type") == "alert.raised"
    assert json.loads(request.body) == queued.payload
    verify(secret, request.body, request.header("Corral-Signature") or "", now=int(time.time()))
    [attempt] = delivery.attempt_log.all()
    assert (attempt.status_code, attempt.error) == (200, "") and attempt.latency_ms > 0


@pytest.mark.django_db
def test_it_signs_a_delivery_to_the_standard_webhooks_spec(allow_private: None, receiver: Receiver) -> None:
    endpoint, secret = endpoint_for(receiver)
    queued = alert_delivery(endpoint)

    webhook_attempt(delivery_id=queued.pk)

    [request] = receiver.requests
    standard = standardwebhooks.Webhook(standard_webhooks_secret(secret))
    assert standard.verify(request.body, request.headers) == queued.payload
    assert request.header("webhook-id") == str(queued.event_id)
    assert request.header("webhook-timestamp") == request.header("Corral-Signature").split(",")[0][2:]
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="No matching signature"):
        standard.verify(request.body.replace(b'"level"', b'"levels"'), request.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="No matching signature"):
        standard.verify(request.body, {**request.headers, "webhook-id": str(uuid.uuid4())})


def test_it_spells_the_secret_in_standard_base64_for_standard_webhooks_libraries() -> None:
    secret = "whsec_" + base64.urlsafe_b64encode(bytes(range(200, 232))).decode().rstrip("=")
    assert "-" in secret or "_" in secret  # the URL-safe alphabet that standard decoders drop
    assert standard_webhooks_secret(secret) == "whsec_" + base64.b64encode(bytes(range(200, 232))).decode()
    with pytest.raises(ValueError, match="whsec_"):
        standard_webhooks_secret("not-a-secret")


def test_it_rejects_a_stale_standard_webhooks_timestamp() -> None:
    secret = derive_secret("server-key", 7, "salt")
    body = b'{"id":"x"}'
    standard = standardwebhooks.Webhook(standard_webhooks_secret(secret))
    stale = int(time.time()) - 301
    headers = webhooks.standard_webhooks_headers(secret, body, message_id="evt", timestamp=stale)
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
        standard.verify(body, headers)
    fresh = webhooks.standard_webhooks_headers(secret, body, message_id="evt", timestamp=int(time.time()))
    assert standard.verify(body, fresh) == {"id": "x"}
    # Signed as "<id>.<timestamp>.<body>" with the secret's decoded bytes, the spec's own example shape.
    assert fresh["webhook-signature"] == standard.sign("evt", dt.datetime.fromtimestamp(
        int(fresh["webhook-timestamp"]), tz=dt.timezone.utc), body)


@pytest.mark.django_db
def test_it_sends_a_slack_payload_to_a_slack_endpoint(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver, slack_format=True)
    queued = alert_delivery(endpoint)

    delivery = webhook_attempt(delivery_id=queued.pk)

    assert delivery.status == "delivered" and receiver.rejections == []
    body = json.loads(receiver.requests[0].body)
    assert body == slack_payload(queued.payload)
    assert endpoint.group.name in body["text"] and body["blocks"][0]["type"] == "header"


@pytest.mark.django_db
def test_it_retries_with_backoff_after_a_500_and_a_dropped_connection(
    allow_private: None, receiver: Receiver
) -> None:
    endpoint, _ = endpoint_for(receiver)
    receiver.script = [500, "close"]
    queued = alert_delivery(endpoint)

    first = webhook_attempt(delivery_id=queued.pk)
    assert (first.status, first.attempts, first.last_status_code) == ("pending", 1, 500)
    assert webhook_deliver_due() == 0  # the retry is 10 s away
    second = webhook_attempt(delivery_id=queued.pk, now=first.next_attempt_at)
    assert (second.status, second.attempts, second.last_status_code) == ("pending", 2, None)
    assert webhook_deliver_due(now=second.next_attempt_at) == 1
    third = WebhookDelivery.objects.get(pk=queued.pk)

    assert (third.status, third.attempts, third.last_status_code) == ("delivered", 3, 200)
    assert len(receiver.requests) == 3 and receiver.rejections == []
    # Receivers deduplicate on webhook-id: every retry of the delivery carries the same one.
    assert {r.header("webhook-id") for r in receiver.requests} == {str(queued.event_id)}
    attempts = list(third.attempt_log.all())
    assert [a.status_code for a in attempts] == [500, None, 200]
    assert attempts[0].error == "" and "RemoteProtocolError" in attempts[1].error
    assert all(a.latency_ms > 0 for a in attempts)
    gaps = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in zip(attempts, attempts[1:])]
    assert 10 <= gaps[0] < 11 and 30 <= gaps[1] < 31


@pytest.mark.django_db
def test_it_logs_a_timeout_as_a_failed_attempt(
    allow_private: None, receiver: Receiver, settings: SettingsWrapper
) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    endpoint, _ = endpoint_for(receiver)
    receiver.script, receiver.hang_seconds = ["hang"], 1.0

    delivery = webhook_attempt(delivery_id=alert_delivery(endpoint).pk)

    [attempt] = delivery.attempt_log.all()
    assert delivery.status == "pending" and attempt.status_code is None
    assert "ReadTimeout" in attempt.error and 250 <= attempt.latency_ms < 1000


@pytest.mark.django_db
def test_it_marks_a_delivery_failed_when_retries_are_exhausted(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    receiver.default = 503
    delivery = alert_delivery(endpoint)

    while delivery.status == "pending":
        assert webhook_deliver_due(now=delivery.next_attempt_at) == 1
        delivery.refresh_from_db()

    attempts = list(delivery.attempt_log.all())
    assert (delivery.status, delivery.next_attempt_at, delivery.last_status_code) == ("failed", None, 503)
    assert delivery.attempts == len(attempts) == len(receiver.requests) == len(RETRY_SCHEDULE) + 1
    assert (attempts[-1].attempted_at - attempts[0].attempted_at) >= dt.timedelta(hours=24)
    assert webhook_deliver_due(now=timezone.now() + dt.timedelta(days=30)) == 0


@pytest.mark.django_db
def test_it_does_not_follow_a_redirect(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    receiver.script = [(302, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"})]

    delivery = webhook_attempt(delivery_id=alert_delivery(endpoint).pk)

    assert [r.path for r in receiver.requests] == ["/hooks"]
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert delivery.attempt_log.get().status_code == 302


@pytest.mark.django_db
def test_it_makes_one_attempt_until_the_retry_is_due(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    receiver.script = [500]
    delivery = alert_delivery(endpoint)

    webhook_attempt(delivery_id=delivery.pk)
    again = webhook_attempt(delivery_id=delivery.pk)

    assert len(receiver.requests) == 1 and again.attempts == 1 and again.attempt_log.count() == 1


@pytest.mark.django_db
def test_it_does_not_send_a_delivered_event_again(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    delivery = webhook_attempt(delivery_id=alert_delivery(endpoint).pk)

    later = timezone.now() + dt.timedelta(days=2)
    assert webhook_attempt(delivery_id=delivery.pk, now=later).status == "delivered"
    assert webhook_deliver_due(now=later) == 0
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_it_attempts_only_due_deliveries_up_to_the_limit(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    due = [webhook_test_event(endpoint=endpoint, actor="alice") for _ in range(3)]
    WebhookDelivery.objects.filter(pk=due[2].pk).update(next_attempt_at=timezone.now() + dt.timedelta(hours=1))

    assert webhook_deliver_due(limit=1) == 1
    assert webhook_deliver_due(limit=5) == 1
    assert webhook_deliver_due(limit=5) == 0
    assert len(receiver.requests) == 2
    assert WebhookDelivery.objects.get(pk=due[2].pk).status == "pending"


@pytest.mark.django_db
def test_it_fails_a_pending_delivery_of_a_disabled_endpoint_without_sending(
    allow_private: None, receiver: Receiver
) -> None:
    endpoint, _ = endpoint_for(receiver)
    delivery = alert_delivery(endpoint)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=False)

    delivery = webhook_attempt(delivery_id=delivery.pk)

    assert delivery.status == "failed" and receiver.connections == 0
    assert "disabled" in delivery.attempt_log.get().error


@pytest.mark.django_db
def test_it_does_not_call_a_url_that_resolves_to_loopback_at_delivery_time(
    settings: SettingsWrapper, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    monkeypatch.setattr(webhook_services, "resolver", PUBLIC)
    endpoint, _ = webhook_endpoint_create(
        group=GroupFactory(), url=f"https://rebind.example.com:{receiver.port}/h", created_by="alice"
    )
    delivery = alert_delivery(endpoint)
    monkeypatch.setattr(webhook_services, "resolver", resolving_to("127.0.0.1"))  # the DNS answer changes

    delivery = webhook_attempt(delivery_id=delivery.pk)

    assert receiver.connections == 0
    [attempt] = delivery.attempt_log.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("refused, not sent: rebind.example.com (127.0.0.1) is a loopback address")
    assert delivery.status == "pending" and delivery.attempts == 1  # retried later: DNS may change back


@pytest.mark.django_db
def test_it_connects_to_the_address_it_vetted_not_a_fresh_lookup(
    allow_private: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "receiver.test" exists only in the fake resolver: the request arrives only if the vetted address is used.
    monkeypatch.setattr(webhook_services, "resolver", resolving_to("127.0.0.1"))
    endpoint, _ = endpoint_for(receiver, url=f"http://receiver.test:{receiver.port}/hooks")

    delivery = webhook_attempt(delivery_id=alert_delivery(endpoint).pk)

    assert delivery.status == "delivered" and receiver.rejections == []
    assert receiver.requests[0].header("Host") == f"receiver.test:{receiver.port}"


@pytest.mark.django_db
def test_it_keeps_the_secret_out_of_every_column(allow_private: None, receiver: Receiver) -> None:
    endpoint, secret = endpoint_for(receiver)
    receiver.script = [500, "close"]
    delivery = alert_delivery(endpoint)
    webhook_attempt(delivery_id=delivery.pk)
    webhook_deliver_due(now=timezone.now() + dt.timedelta(minutes=1))
    webhook_deliver_due(now=timezone.now() + dt.timedelta(minutes=2))
    webhook_test_event(endpoint=endpoint, actor="alice")
    rotated = webhook_endpoint_rotate_secret(endpoint=endpoint, actor="alice")

    rows = [
        *WebhookEndpoint.objects.values(), *WebhookDelivery.objects.values(), *DeliveryAttempt.objects.values(),
        *AuditEvent.objects.values(),
    ]
    assert DeliveryAttempt.objects.count() == 3
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered"
    for value in (secret, rotated):
        hidden = value[12:]  # everything after the visible prefix
        assert not [row for row in rows if hidden in json.dumps(row, default=str)]
    assert all(secret[12:] not in a.error for a in DeliveryAttempt.objects.all())


# --- concurrency (real transactions: the receiver's thread and the workers use their own connections) ----


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_holds_no_transaction_open_during_the_http_call(allow_private: None, receiver: Receiver) -> None:
    endpoint, _ = endpoint_for(receiver)
    delivery = alert_delivery(endpoint)

    def write_while_called(request: Received) -> int:
        # PostgreSQL: a row lock held by the sender fails NOWAIT. SQLite: an open write transaction blocks
        # this write until the sender's HTTP timeout, so the sender sees no answer in time.
        try:
            with transaction.atomic():
                list(WebhookDelivery.objects.select_for_update(nowait=True).filter(pk=delivery.pk))
                Heartbeat.objects.update_or_create(component="webhook-probe",
                                                   defaults={"seen_at": timezone.now()})
            return 200
        except Exception:
            return 500
        finally:
            connections.close_all()

    receiver.script = [write_while_called]

    result = webhook_attempt(delivery_id=delivery.pk)

    assert (result.status, result.last_status_code) == ("delivered", 200)
    assert Heartbeat.objects.filter(component="webhook-probe").exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_sends_once_when_several_workers_attempt_the_same_delivery(
    allow_private: None, receiver: Receiver
) -> None:
    endpoint, _ = endpoint_for(receiver)
    delivery = alert_delivery(endpoint)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            webhook_attempt(delivery_id=delivery.pk)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    delivery.refresh_from_db()
    assert len(receiver.requests) == 1
    assert (delivery.status, delivery.attempts, delivery.attempt_log.count()) == ("delivered", 1, 1)

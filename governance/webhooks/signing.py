"""Webhook rules as plain functions: secrets, signatures, URL safety, payloads and the retry schedule.

No ORM and no settings in here: the services in governance/webhooks/services.py feed these functions, and
docs/webhooks.md gives tenants a copy of `verify`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

SECRET_MARK = "whsec_"
SIGNATURE_HEADER = "Corral-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
# Standard Webhooks (standardwebhooks.com): the same delivery signed a second way, for receivers that use
# that spec's libraries. The id is the event id, so it is the same on every retry.
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"

# Seconds to wait after the n-th failed attempt (index n - 1). 14 attempts spread over 31 h 48 min.
RETRY_SCHEDULE: tuple[int, ...] = (
    10, 30, 60, 120, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 8 * 3600, 8 * 3600,
)


# --- secrets and signatures -------------------------------------------------------------------------------


def derive_secret(signing_key: str, endpoint_id: int, salt: str) -> str:
    """The endpoint's signing secret. Only the salt is stored, so a database dump reveals no secret."""
    digest = hmac.new(signing_key.encode(), f"{endpoint_id}:{salt}".encode(), hashlib.sha256).digest()
    return SECRET_MARK + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _signature(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The Corral-Signature header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_signature(secret, body, timestamp)}"


def _secret_key_bytes(secret: str) -> bytes:
    """The 32 random bytes a `whsec_` secret encodes (URL-safe base64 without padding)."""
    if not secret.startswith(SECRET_MARK):
        raise ValueError(f"A webhook secret starts with {SECRET_MARK!r}.")
    encoded = secret[len(SECRET_MARK):]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def standard_webhooks_secret(secret: str) -> str:
    """The endpoint's secret in the form Standard Webhooks libraries take: `whsec_` + standard base64.

    The same key, only spelt differently: Corral's secrets use the URL-safe alphabet, whose `-` and `_` the
    libraries' standard base64 decoders would silently drop.
    """
    return SECRET_MARK + base64.b64encode(_secret_key_bytes(secret)).decode()


def standard_webhooks_headers(secret: str, body: bytes, *, message_id: str, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers for `body`: `webhook-signature` is `v1,<base64 HMAC-SHA256>` of
    "<id>.<timestamp>.<body>", keyed with the secret's decoded bytes as the spec says."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key_bytes(secret), signed, hashlib.sha256).digest()
    return {
        STANDARD_ID_HEADER: message_id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: "v1," + base64.b64encode(digest).decode(),
    }


class SignatureError(Exception):
    """A webhook request must be rejected; the message says why."""


class MalformedSignatureHeader(SignatureError):
    pass


class SignatureMismatch(SignatureError):
    pass


class TimestampOutOfTolerance(SignatureError):
    pass


def verify(
    secret: str, body: bytes, header: str, *, now: int, tolerance: int = SIGNATURE_TOLERANCE_SECONDS
) -> None:
    """Accept a request only if one v1 signature matches `body` and its timestamp is within `tolerance` of now.

    Several v1= values are accepted so a sender may sign with an old and a new secret during a rotation.
    Raises a SignatureError subclass; returns None when the request is authentic and fresh.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise MalformedSignatureHeader(f"Signature header part {part.strip()!r} is not key=value.")
        if key == "t":
            if timestamp is not None or not value.isdigit():
                raise MalformedSignatureHeader("Signature header needs exactly one t=<unix seconds>.")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise MalformedSignatureHeader("Signature header has no t=<unix seconds>.")
    if not candidates:
        raise MalformedSignatureHeader("Signature header has no v1=<hex signature>.")
    expected = _signature(secret, body, timestamp)
    # Compare against every candidate (no early exit), each in constant time.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise SignatureMismatch("No v1 signature matches the body: wrong secret, altered body or forged header.")
    if abs(now - timestamp) > tolerance:
        direction = "old" if timestamp < now else "far in the future"
        raise TimestampOutOfTolerance(
            f"Signature timestamp is {abs(now - timestamp)} s {direction}; at most {tolerance} s is accepted."
        )


# --- where a webhook may be sent (server-side request forgery) --------------------------------------------


class UnsafeWebhookURL(ValueError):
    """The URL may not be used as a webhook target; the message names the rule it breaks."""


# Cloud metadata services are never a webhook receiver: refused by name (whatever DNS says) and by address,
# even when private networks are allowed.
_METADATA_HOSTNAMES = {"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                       "instance-data.ec2.internal"}
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64, IPv4-compatible)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _non_public_kind(address: IPAddress) -> str | None:
    """Why the address is not a public internet address, or None when it is."""
    # The embedded IPv4 address first: "::ffff:127.0.0.1" is best described as loopback.
    embedded = _embedded_ipv4(address)
    for candidate in (address,) if embedded is None else (embedded, address):
        for kind in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
            if getattr(candidate, f"is_{kind}"):
                return kind.replace("_", "-")
        if not candidate.is_global:  # shared (100.64/10), benchmarking, documentation, ...
            return "non-public"
    return None


def _refuse_address(address: IPAddress, *, host: str, allow_private: bool) -> None:
    shown = host if host == str(address) else f"{host} ({address})"
    if address in _METADATA_ADDRESSES or _embedded_ipv4(address) in _METADATA_ADDRESSES:
        raise UnsafeWebhookURL(f"{shown} is a cloud metadata address.")
    kind = _non_public_kind(address)
    if kind is not None and not allow_private:
        raise UnsafeWebhookURL(f"{shown} is a {kind} address; webhooks may only reach public addresses.")


def _looks_numeric(host: str) -> bool:
    # "2130706433", "0x7f.1" or "0177.0.0.1" are 127.0.0.1 to some resolvers: refuse anything that is
    # numeric but not a canonical address, so the check and the connection cannot disagree about it.
    return all(part.isdigit() or part.lower().startswith("0x") for part in host.split(".") if part)


def vetted_addresses(url: str, *, allow_private: bool, resolver: Resolver = socket.getaddrinfo) -> list[IPAddress]:
    """Every address `url`'s host resolves to, after checking each one; raises UnsafeWebhookURL.

    The caller should connect to one of these addresses (not resolve the name again), so a DNS answer that
    changes between the check and the connection cannot redirect the request.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookURL(f"The URL cannot be parsed: {exc}.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeWebhookURL(f"The scheme must be https, not {scheme or 'missing'!r}.")
    if scheme == "http" and not allow_private:
        raise UnsafeWebhookURL("The scheme must be https; plain http is accepted only where an operator allows "
                               "private networks.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeWebhookURL("The URL may not contain credentials (user:password@); send them another way.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeWebhookURL("The URL has no host.")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        _refuse_address(literal, host=host, allow_private=allow_private)
        return [literal]
    if _looks_numeric(host):
        raise UnsafeWebhookURL(f"{host} is a numeric host that is not a canonical IP address.")
    if host in _METADATA_HOSTNAMES:
        raise UnsafeWebhookURL(f"{host} names a cloud metadata service.")
    if (host == "localhost" or host.endswith(".localhost")) and not allow_private:
        raise UnsafeWebhookURL(f"{host} names this machine (loopback).")
    try:
        infos = resolver(host, port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeWebhookURL(f"{host} cannot be resolved: {exc}.") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        # sockaddr is (host, port) or (host, port, flowinfo, scope_id); an IPv6 host may carry "%scope".
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        _refuse_address(address, host=host, allow_private=allow_private)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeWebhookURL(f"{host} resolves to no address.")
    return addresses


def check_url_target(url: str, *, allow_private: bool, resolver: Resolver = socket.getaddrinfo) -> None:
    """Raise UnsafeWebhookURL unless `url` is https (or http where private networks are allowed), carries no
    credentials, and every address its host resolves to is public (any address when `allow_private`, except
    cloud metadata services, which are always refused)."""
    vetted_addresses(url, allow_private=allow_private, resolver=resolver)


# --- payloads ---------------------------------------------------------------------------------------------


def event_payload(
    *,
    event_id: str,
    event_type: str,
    group: dict[str, Any],
    version: dict[str, Any] | None,
    level: str,
    kind: str,
    figures: dict[str, Any],
    link: str,
    created_at: str,
    message: str,
) -> dict[str, Any]:
    """The JSON body of a webhook event (documented in docs/webhooks.md; keep the two in step)."""
    return {
        "id": str(event_id),
        "type": event_type,
        "created_at": created_at,
        "group": group,
        "version": version,
        "level": level,
        "kind": kind,
        "figures": figures,
        "message": message,
        "link": link,
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body for `event`: `text` for notifications, `blocks` for the message."""
    version = event.get("version") or {}
    group_name = (event.get("group") or {}).get("name", "")
    is_test = event.get("kind") == "test"
    message = str(event.get("message", ""))
    title = f"{'[test] ' if is_test else ''}Corral {event.get('kind', '')} alert: {group_name}"
    if version:
        title += f" · {version.get('name', '')}"
    title += f" · level {event.get('level', '')}"
    fields = [
        {"type": "mrkdwn", "text": f"*Group*\n{_slack_escape(group_name)}"},
        {"type": "mrkdwn", "text": f"*Version*\n{_slack_escape(version.get('name', '—') if version else '—')}"},
        {"type": "mrkdwn", "text": f"*Level*\n{_slack_escape(str(event.get('level', '')))}"},
        {"type": "mrkdwn", "text": f"*Kind*\n{_slack_escape(str(event.get('kind', '')))}"},
    ]
    return {
        "text": _slack_escape(f"{title}: {message}"),  # Slack reads "text" as mrkdwn: & < > are markup
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(message)[:3000]}},
            {"type": "section", "fields": fields},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"<{event.get('link', '')}|Open in Corral> · event {event.get('id', '')} "
                        f"· {event.get('created_at', '')}",
                    }
                ],
            },
        ],
    }


# --- retries ----------------------------------------------------------------------------------------------


def next_attempt_delay(attempts: int) -> int | None:
    """Seconds to wait after `attempts` failed attempts, or None when the delivery should be given up."""
    if attempts < 1:
        return 0
    if attempts > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempts - 1]

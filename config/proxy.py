"""The client's address as seen through the proxies in front of Corral (TRUSTED_PROXY_COUNT)."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The address of the client that sent ``request``.

    Each trusted proxy appends the address it received the request from to X-Forwarded-For, so the entry
    TRUSTED_PROXY_COUNT places from the right is the client's; whatever is further left the client may have
    written itself, and is never read. With no trusted proxy, or a header shorter than the proxies promise
    (a request that did not come through them), the connection's own address.
    """
    remote = request.META.get("REMOTE_ADDR")
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < count:
        return remote
    try:
        return str(ipaddress.ip_address(forwarded[-count]))
    except ValueError:  # not an address: a proxy that does not append the client's address, or a forgery
        return remote

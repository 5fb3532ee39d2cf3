"""Deploy checks of the inference gateway (manage.py check --deploy)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def gateway_limits_shared(app_configs: Any, **kwargs: Any) -> list[Warning]:
    if settings.REDIS_URL:
        return []
    return [Warning(
        "REDIS_URL is not set: the gateway keeps its rate limits in each process's memory, so with more than one "
        "web process they do not hold across processes.",
        hint="Set REDIS_URL (see docs/gateway.md).", id="corral.W001")]

"""The pool's answers to what licensing announces (licensing/signals.py); connected in InferenceConfig.ready."""

from __future__ import annotations

from typing import Any

from access.models import Organisation
from inference.models import Deployment
from inference.services import deployments_drain_eu_multimodal
from licensing import signals


def drain_for_eu(sender: Any, *, organisation: Organisation, actor: str, **kwargs: Any) -> list[Deployment]:
    return deployments_drain_eu_multimodal(organisation=organisation, actor=actor)


def connect() -> None:
    signals.organisation_in_eu.connect(drain_for_eu, dispatch_uid="inference.drain_for_eu")

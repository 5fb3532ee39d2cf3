"""Governance's answers to what licensing announces (licensing/signals.py); connected in GovernanceConfig.ready."""

from __future__ import annotations

from typing import Any

from access.models import AffiliateGroup
from governance.compliance import services as evaluation
from licensing import signals


def policy_for_new_group(sender: Any, *, group: AffiliateGroup, **kwargs: Any) -> None:
    evaluation.group_policy_get(group=group)


def evaluate_changed_group(sender: Any, *, group_id: int, urgent: bool = False, **kwargs: Any) -> None:
    evaluation.evaluation_schedule(group_id=group_id, urgent=urgent)


def connect() -> None:
    signals.group_created.connect(policy_for_new_group, dispatch_uid="governance.policy_for_new_group")
    signals.group_judgement_changed.connect(evaluate_changed_group, dispatch_uid="governance.evaluate_changed_group")

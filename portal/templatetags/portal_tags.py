"""Template helpers: SVG charts, state badges and compact numbers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.utils.safestring import mark_safe

from access.principals import ActorView
from portal import charts
from portal.access import access_of

register = template.Library()


@register.simple_tag
def mau_chart(**kwargs: Any) -> str:
    # A missing forecast resolves to "" in a template: the chart wants a date or None.
    for name in ("crossing", "earliest", "latest"):
        if not isinstance(kwargs.get(name), dt.date):
            kwargs[name] = None
    return mark_safe(charts.monthly_mau_chart(**kwargs))  # every text inside is escaped by charts


@register.simple_tag
def rolling_chart(**kwargs: Any) -> str:
    return mark_safe(charts.rolling_chart(**kwargs))


@register.simple_tag
def meter(used: int, total: int, label: str) -> str:
    return mark_safe(charts.meter(used=used, total=total, label=label))


@register.filter
def compact(value: Any) -> str:
    try:
        return charts.compact(float(value))
    except (TypeError, ValueError):
        return "–"


@register.filter
def percent(value: Any, of: Any) -> str:
    try:
        return f"{float(value) / float(of):.1%}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "–"


@register.filter
def plain_interval(status: Any) -> str:
    """A figure's 95% interval as a reader takes it: a range, or a single number when it is exact."""
    lower, upper = getattr(status, "lower", None), getattr(status, "upper", None)
    if lower is None or upper is None:
        return ""
    if lower == upper:
        return "an exact figure"
    return f"likely between {lower:,} and {upper:,}"


@register.filter
def first_sentence(text: Any) -> str:
    """The first sentence of an explanation, for a summary line; the whole text goes one click away."""
    text = str(text or "")
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


@register.inclusion_tag("portal/_state.html")
def state_badge(state: str | None, label: str | None = None) -> dict[str, Any]:
    return {"state": state or "unknown", "label": label or (state or "not evaluated")}


@register.inclusion_tag("portal/_state.html")
def status_badge(status: Any) -> dict[str, Any]:
    """A compliance status as a person reads it: its label, in the warning colour when it is a "below" that
    does not cover the whole group (partial coverage)."""
    if status is None:
        return {"state": "unknown", "label": "not evaluated"}
    return {"state": "partial" if status.partial_coverage else status.state, "label": status.label}


@register.filter
def ready_count(replicas: Any) -> int:
    """How many of a deployment's (prefetched) replicas are ready."""
    return sum(1 for replica in replicas if replica.state == "ready")


@register.filter
def seen_by(text: Any, request: Any) -> Any:
    """An actor label, or a sentence naming actors, as the signed-in person may see it: another organisation's
    API key reads "an API key of <it>" unless they are a group admin (access/principals.py ``ActorView``)."""
    if not text or not isinstance(text, str):
        return text
    view = getattr(request, "_actor_view", None)
    if view is None:
        view = request._actor_view = ActorView(access_of(request).principal)
    return view.text(text)


@register.filter
def excluded_words(count: int) -> str:
    """ "excludes 2 stored sketches that could not be read": said beside a figure that leaves quarantined
    sketches out."""
    from governance.compliance.rules import excluded_words as words

    return words(int(count))

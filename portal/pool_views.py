"""The platform lead's pages of the GPU pool: quotas, a deployment's live state, replica logs and token usage.

A deployment's page refreshes its state by itself while it changes: ``deployment_status`` answers the state
block as JSON (``portal/static/portal/live.js`` polls it and swaps the block only when it differs, and stops
once the deployment settles). Without JavaScript the page is the same, reloaded by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from access.models import Scope
from inference import selectors as inference_selectors
from inference.api.serializers import QuotaSerializer
from inference.models import Deployment, DeploymentState, Replica, ReplicaState
from inference.services import LOG_LINES, quota_use_many, replica_log_cached, replica_log_queue, replica_log_request
from portal import forms
from portal.access import access_of

USAGE_DAYS = (1, 7, 30, 90)
_SETTLED_DEPLOYMENT = {DeploymentState.READY, DeploymentState.STOPPED, DeploymentState.FAILED}
_SETTLED_REPLICA = {ReplicaState.READY, ReplicaState.STOPPED, ReplicaState.FAILED}
STAFF_SETS_QUOTAS = ("Quotas are set by Corral staff (the API's rule: /api/v1/staff/quotas/ is staff only). "
                     "Ask your Corral operator for more GPUs or CPU replicas.")


def _deployment_or_404(request: HttpRequest, pk: int) -> Deployment:
    deployment = inference_selectors.deployment_get(organisations=access_of(request).organisations(), pk=pk)
    if deployment is None:
        raise Http404("No such deployment.")
    return deployment


def settled(deployment: Deployment) -> bool:
    """Whether nothing is moving: the deployment and each replica are in a state only a request changes."""
    return deployment.state in _SETTLED_DEPLOYMENT and all(
        replica.state in _SETTLED_REPLICA for replica in deployment.replica_set.all())


@never_cache
@login_required
@require_GET
def deployment_status(request: HttpRequest, pk: int) -> JsonResponse:
    """The deployment page's live block, for the page's script to swap in while the deployment changes."""
    deployment = _deployment_or_404(request, pk)
    html = render_to_string("portal/_deployment_live.html", {"deployment": deployment}, request=request)
    return JsonResponse({"state": deployment.state, "settled": settled(deployment), "html": html})


def _replica_log_context(replica: Replica) -> dict[str, Any]:
    """The cached answer of the replica's worker, how old it is, and whether a newer read is awaited."""
    entry, asked_at = replica_log_cached(replica=replica)
    now = timezone.now()
    read_at = dt.datetime.fromisoformat(entry["read_at"]) if entry else None
    return {
        "replica": replica, "entry": entry, "read_at": read_at, "pending": asked_at is not None,
        "age_seconds": max(0, int((now - read_at).total_seconds())) if read_at else None,
        "asked_seconds": max(0, int((now - asked_at).total_seconds())) if asked_at else None,
        "queue": replica_log_queue(replica) or "the default queue", "limit": LOG_LINES,
    }


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def replica_log(request: HttpRequest, pk: int, replica_pk: int) -> HttpResponse:
    """A replica's last log lines, as the worker that can read them last read them (inference/services.py:
    the local backend's file is on the replica's host, a Kubernetes pod's log behind the workers' API token).
    Opening the page asks for a read when there is no recent one; POST asks for a new one. While a read is
    awaited, the page's script polls ``?format=live`` and swaps the answer in."""
    deployment = _deployment_or_404(request, pk)
    replica = Replica.objects.filter(pk=replica_pk, deployment=deployment).select_related("node").first()
    if replica is None:
        raise Http404("No such replica.")
    replica.deployment = deployment
    if request.method == "POST":
        if replica_log_request(replica=replica):
            messages.success(request, "A new read of the log was asked for.")
        else:
            messages.error(request, "No worker could be asked to read the log (the task queue is unreachable); "
                                    "try again shortly.")
        return redirect("portal:replica-log", pk=deployment.pk, replica_pk=replica.pk)
    if request.GET.get("format") == "live":
        context = _replica_log_context(replica)
        html = render_to_string("portal/_replica_log_live.html", context, request=request)
        return JsonResponse({"settled": not context["pending"], "html": html})
    if replica_log_cached(replica=replica) == (None, None):
        replica_log_request(replica=replica)  # nothing recent to show: the first read needs no click
    return render(request, "portal/replica_log.html", {"deployment": deployment, **_replica_log_context(replica)})


@login_required
@require_http_methods(["GET", "POST"])
def quota_list(request: HttpRequest) -> HttpResponse:
    """GPU and CPU-replica quotas of the caller's organisations and what is in use; staff change them."""
    access = access_of(request)
    organisations = list(access.organisations())  # by name, the model's ordering
    quotas = inference_selectors.gpu_quotas(organisations=organisations)
    form = None
    if request.method == "POST":
        if not access.is_staff:
            raise PermissionDenied(STAFF_SETS_QUOTAS)
        organisation = next((o for o in organisations if str(o.pk) == request.POST.get("organisation")), None)
        if organisation is None:
            raise Http404("No such organisation.")
        form = forms.QuotaForm(request.POST, prefix=f"q{organisation.pk}")
        if form.is_valid():
            checked = QuotaSerializer(quotas.get(organisation.pk), data={"organisation": organisation.pk,
                                                                        **form.cleaned_data})
            if checked.is_valid():
                checked.save()
                messages.success(request, f"Quota of {organisation.name}: {form.cleaned_data['max_gpus']} GPUs, "
                                          f"{form.cleaned_data['max_cpu_replicas']} CPU replicas.")
                return redirect("portal:quotas")
            for field, errors in checked.errors.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, str(error))
        form.organisation_id = organisation.pk  # type: ignore[attr-defined]
    rows = []
    in_use = quota_use_many(organisation_ids=[o.pk for o in organisations])
    for organisation in organisations:
        quota = quotas.get(organisation.pk)
        gpus, cpu_replicas = in_use[organisation.pk]
        row_form = None
        if access.is_staff:
            row_form = form if form is not None and form.organisation_id == organisation.pk else forms.QuotaForm(  # type: ignore[attr-defined]
                prefix=f"q{organisation.pk}", initial={"max_gpus": quota.max_gpus if quota else 0,
                                                       "max_cpu_replicas": quota.max_cpu_replicas if quota else 0})
        rows.append({"organisation": organisation, "quota": quota, "gpus": gpus, "cpu_replicas": cpu_replicas,
                     "form": row_form})
    return render(request, "portal/quota_list.html", {
        "rows": rows, "can_edit": access.is_staff, "staff_only": STAFF_SETS_QUOTAS,
    }, status=400 if form is not None and form.errors else 200)


@login_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    """Gateway token use of the caller's organisations per key and per deployment over the last days."""
    access = access_of(request)
    raw = request.GET.get("days", "30")
    days = int(raw) if raw.isdigit() else None
    if days not in USAGE_DAYS:
        return HttpResponseBadRequest(f"days must be one of {', '.join(map(str, USAGE_DAYS))}; got {raw[:20]!r}.",
                                      content_type="text/plain; charset=utf-8")  # echoes input: never as HTML
    since = timezone.now().date() - dt.timedelta(days=days - 1)
    summary = inference_selectors.token_usage_summary(organisation_ids=access.organisation_ids(Scope.READ),
                                                      since=since)
    return render(request, "portal/usage.html", {
        "by_key": summary.by_key, "by_deployment": summary.by_deployment, "totals": summary.totals, "days": days,
        "since": since,
        "choices": USAGE_DAYS,
    })

"""The portal's pages. Thin, like the API's views: find the object inside the caller's reach (else 404),
check the role for a change (else 403), call one service or selector, render. Every change is a POST."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from access import selectors as access_selectors
from access.audit import audit_events_visible, audit_verify_cached
from access.keys import api_key_create, api_key_revoke
from access.models import ApiKey, Invitation, Membership, Organisation, Scope
from access.principals import ActorView, key_actors_hidden_from
from governance.compliance import selectors as compliance_selectors
from governance.compliance import services as evaluation_services
from governance.compliance.api import PolicySerializer
from governance.metering.selectors import mau_month_many
from governance.models import WebhookEndpoint
from governance.webhooks import selectors as webhook_selectors
from governance.webhooks import services as webhook_services
from inference import selectors as inference_selectors
from inference import services as inference_services
from inference.models import Deployment
from licensing import selectors as licensing_selectors
from licensing import services as licensing_services
from licensing.models import Product
from licensing.months import month_start, previous_month
from licensing.obligations import NOTICE_FILENAME, notice_file_text
from portal import forms, pool_views
from portal import selectors as portal_selectors
from portal.access import Access, access_of, needs

logger = logging.getLogger(__name__)
PAGE_SIZE = 50


def _page(request: HttpRequest, queryset: QuerySet, size: int = PAGE_SIZE) -> Any:
    return Paginator(queryset, size).get_page(request.GET.get("page"))


def _month(value: str | None, default: dt.date) -> dt.date:
    if not value:
        return default
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a month as YYYY-MM.") from exc


# --- overview and groups ----------------------------------------------------------------------------------


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    rows = portal_selectors.overview_rows(groups=access.groups())
    pool = portal_selectors.pool_usage() if access.is_staff else None
    last_month = previous_month(timezone.now().date())
    return render(request, "portal/overview.html", {"rows": rows, "answers": portal_selectors.version_answers(rows),
                                                    "pool": pool, "last_month": last_month})


@login_required
@require_GET
def group_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    figures = portal_selectors.group_figures(group=group)
    policy = evaluation_services.group_policy_get(group=group)
    forecast = compliance_selectors.group_forecast(group=group)
    alerts = compliance_selectors.alert_list_latest(group=group, limit=5)
    return render(request, "portal/group_detail.html", {
        "group": group, "figures": figures, "policy": policy, "forecast": forecast, "alerts": alerts,
        "visible_org_ids": set(access.organisation_ids()),
        "can_evaluate": access.can_in_group(Scope.WRITE, group),
        "writable": {group.pk} if access.is_group_admin(group) else set(),
        "is_group_admin": access.is_group_admin(group),
        "months_to_declare": [{**m, "month_date": dt.datetime.strptime(m["month"], "%Y-%m").date()}
                              for m in evaluation_services.months_to_declare(group=group) if m["month"]],
        "authority": licensing_selectors.group_authority(group=group),
    })


@login_required
@require_POST
def group_admin_appoint(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    access.require_group_admin(group)
    try:
        role = licensing_services.group_admin_appoint(group=group, username=request.POST.get("username", ""),
                                                      actor=access.label)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{role.user.get_username()} is now an admin of {group.name}.")
    return redirect("portal:group", pk=group.pk)


@login_required
@require_POST
def group_admin_remove(request: HttpRequest, pk: int, admin_pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    access.require_group_admin(group)
    role = licensing_selectors.group_admin_get(group=group, pk=admin_pk)
    if role is None:
        raise Http404("No such group admin.")
    licensing_services.group_admin_remove(role=role, actor=access.label)
    messages.success(request, f"{role.user.get_username()} is no longer an admin of {group.name}.")
    return redirect("portal:group", pk=group.pk)


@login_required
@require_POST
def group_management(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    access.require_group_admin(group)
    organisation_id = request.POST.get("organisation", "")
    organisation = (licensing_selectors.group_organisation_get(group=group, pk=int(organisation_id))
                    if organisation_id.isdigit() else None)
    if organisation is None:
        messages.error(request, "Choose an organisation of this group.")
        return redirect("portal:group", pk=group.pk)
    try:
        licensing_services.group_management_transfer(group=group, organisation=organisation, actor=access.label)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{organisation.name} now manages {group.name}; its admins are the group's admins.")
    return redirect("portal:group", pk=group.pk)


@login_required
@require_POST
def group_evaluate(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    access.require_in_group(Scope.WRITE, group)
    result = evaluation_services.group_evaluate(group=group)
    messages.success(request, f"Evaluated {group.name}: {len(result.statuses)} statuses, "
                              f"{len(result.alerts)} new alerts.")
    return redirect("portal:group", pk=group.pk)


# --- products ---------------------------------------------------------------------------------------------


def _product_or_404(access: Access, pk: int) -> Product:
    product = licensing_selectors.product_get(organisations=access.organisations(), pk=pk)
    if product is None:
        raise Http404("No such product.")
    return product


@login_required
@require_GET
def product_list(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    org_ids = access.organisation_ids()
    products = licensing_selectors.product_list(organisations=org_ids)
    page = _page(request, products)
    states = licensing_selectors.acceptance_states(organisation_ids=list({p.organisation_id for p in page}))
    last_month = previous_month(timezone.now().date())
    figures = mau_month_many(scopes=list(page), month=last_month)
    rows = [{"product": p, "acceptance": states.get((p.organisation_id, p.licence_version_id)),
             "mau": figures[p.pk].estimate} for p in page]
    return render(request, "portal/product_list.html", {
        "page": page, "rows": rows, "last_month": last_month,
        "can_create": bool(access.organisation_ids(Scope.WRITE)),
    })


@login_required
@require_http_methods(["GET", "POST"])
def product_create(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    organisations = access.organisations(Scope.WRITE)
    if not organisations.exists():
        raise PermissionDenied(f"Your role does not allow creating products: it needs {needs(Scope.WRITE)}.")
    form = forms.ProductForm(request.POST or None, organisations=organisations)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        try:
            product = licensing_services.product_create(actor=access.label, **data)
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        else:
            messages.success(request, f"Product {product.name} created. Accept its licence to use it." if
                             product.built_on_llama else f"Product {product.name} created: not built on Llama, "
                                                         f"metered and counted towards the 700M limit.")
            return redirect("portal:product", pk=product.pk)
    return render(request, "portal/product_form.html", {"form": form, "product": None}, status=_status(form))


def _status(form: Any) -> int:
    return 400 if form.is_bound and form.errors else 200


@login_required
@require_GET
def product_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    product = _product_or_404(access, pk)
    version = product.licence_version
    accept_form = forms.AcceptanceForm(initial={"licence_sha256": version.licence_sha256,
                                                "aup_version": version.aup_version,
                                                "aup_sha256": version.aup_sha256} if version else None)
    return _product_page(request, access, product, accept_form)


def _product_page(request: HttpRequest, access: Access, product: Product, accept_form: forms.AcceptanceForm,
                  status: int = 200) -> HttpResponse:
    version = product.licence_version
    obligations = licensing_selectors.product_obligations_get(product=product)
    acceptances = (licensing_selectors.licence_acceptance_list(organisation=product.organisation,
                                                               licence_version=version, limit=20) if version else [])
    today = timezone.now().date()
    months = [previous_month(today), month_start(today)]
    counts = {m: mau_month_many(scopes=[product], month=m)[product.pk] for m in months}
    mau = {m: count.estimate for m, count in counts.items()}
    group = product.organisation.group
    return render(request, "portal/product_detail.html", {
        "statuses": compliance_selectors.licence_statuses(group_id=group.pk, licence_version=version),
        "is_staff": access.is_staff,
        "is_group_admin": access.is_group_admin(group),
        "product": product, "version": version, "obligations": obligations, "acceptances": acceptances,
        "mau_last": mau[months[0]], "mau_this": mau[months[1]], "months": months,
        # Quarantined sketches (unreadable) each figure leaves out, said beside it.
        "excluded_last": len(counts[months[0]].excluded), "excluded_this": len(counts[months[1]].excluded),
        "deployments": inference_selectors.product_deployments(product=product),
        "can_write": access.can(Scope.WRITE, product.organisation_id), "accept_form": accept_form,
        "not_built_on_llama": licensing_selectors.NOT_BUILT_ON_LLAMA,
    }, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def product_edit(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    product = _product_or_404(access, pk)
    access.require(Scope.WRITE, product.organisation_id)
    initial = {"name": product.name, "licence_version": product.licence_version, "base_model": product.base_model,
               "status": product.status, "launch_date": product.launch_date, "description": product.description}
    form = forms.ProductForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        changes = {k: v for k, v in form.cleaned_data.items() if v != initial.get(k)}
        try:
            if changes:
                licensing_services.product_update(product=product, actor=access.label, **changes)
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        else:
            messages.success(request, "Product saved." if changes else "Nothing changed.")
            return redirect("portal:product", pk=product.pk)
    return render(request, "portal/product_form.html", {"form": form, "product": product}, status=_status(form))


@login_required
@require_POST
def product_accept(request: HttpRequest, pk: int) -> HttpResponse:
    """Record that the signed-in person accepted the product's licence and AUP, as the page showed them."""
    access = access_of(request)
    product = _product_or_404(access, pk)
    access.require(Scope.WRITE, product.organisation_id)
    form = forms.AcceptanceForm(request.POST)
    if product.licence_version is None:
        form.is_valid()
        form.add_error(None, f"{product.name} is not built on Llama: it has no licence to accept.")
    elif form.is_valid():
        try:
            licensing_services.licence_accept(
                organisation=product.organisation, licence_version=product.licence_version, product=product,
                licence_sha256=form.cleaned_data["licence_sha256"], aup_version=form.cleaned_data["aup_version"],
                aup_sha256=form.cleaned_data["aup_sha256"] or None, accepted_by=access.label, user=request.user,
                note=form.cleaned_data["note"])
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        else:
            messages.success(request, f"Recorded: you accepted the {product.licence_version.licence_name} "
                                      f"and its Acceptable Use Policy.")
            return redirect("portal:product", pk=product.pk)
    return _product_page(request, access, product, form, status=400)


@login_required
@require_GET
def product_notice(request: HttpRequest, pk: int) -> HttpResponse:
    product = _product_or_404(access_of(request), pk)
    if product.licence_version is None:
        raise Http404(f"{product.name} is not built on Llama: it has no Notice file to ship.")
    response = HttpResponse(notice_file_text(product.licence_version.terms()), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{NOTICE_FILENAME}"'
    return response


# --- organisations ----------------------------------------------------------------------------------------


def _organisation_or_404(access: Access, pk: int) -> Organisation:
    organisation = licensing_selectors.organisation_get(organisations=access.organisations(), pk=pk)
    if organisation is None:
        raise Http404("No such organisation.")
    return organisation


@login_required
@require_GET
def organisation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The organisation's facts the licence depends on: its EU domicile and a clause 1.b.ii exemption."""
    access = access_of(request)
    return _organisation_page(request, access, _organisation_or_404(access, pk))


def _organisation_page(request: HttpRequest, access: Access, organisation: Organisation,
                       exemption_form: forms.ExemptionForm | None = None, status: int = 200) -> HttpResponse:
    can_admin = access.can(Scope.ADMIN, organisation.pk)
    exemption = licensing_selectors.organisation_exemption(organisation=organisation)
    return render(request, "portal/organisation_detail.html", {
        "organisation": organisation, "can_admin": can_admin, "exemption": exemption,
        "history": licensing_selectors.exemption_history(organisation=organisation)[:20],
        "products": licensing_selectors.organisation_products(organisation=organisation),
        "domicile_form": forms.DomicileForm(initial={"eu_domiciled": organisation.eu_domiciled}),
        "exemption_form": exemption_form or (forms.ExemptionForm() if can_admin and exemption is None else None),
    }, status=status)


@login_required
@require_POST
def organisation_domicile(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    organisation = _organisation_or_404(access, pk)
    access.require(Scope.ADMIN, organisation.pk)
    form = forms.DomicileForm(request.POST)
    form.is_valid()  # a checkbox: absent is "no"
    result = licensing_services.organisation_domicile_set(
        organisation=organisation, eu_domiciled=form.cleaned_data["eu_domiciled"], actor=access.label)
    where = "in the European Union" if result.organisation.eu_domiciled else "outside the European Union"
    messages.success(request, f"Recorded: {organisation.name}'s principal place of business is {where}."
                     if result.changed else "Nothing changed.")
    if result.drained:
        messages.warning(request, f"Drained {len(result.drained)} deployment(s) of multimodal models the Acceptable "
                                  f"Use Policy withholds from EU companies: "
                                  f"{', '.join(d.served_model_name for d in result.drained)}. An alert says why.")
    return redirect("portal:organisation", pk=organisation.pk)


@login_required
@require_POST
def organisation_exemption(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    organisation = _organisation_or_404(access, pk)
    access.require(Scope.ADMIN, organisation.pk)
    form = forms.ExemptionForm(request.POST)
    if form.is_valid():
        try:
            licensing_services.exemption_record(organisation=organisation, recorded_by=access.label,
                                                **form.cleaned_data)
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        else:
            messages.success(request, f"Recorded: {organisation.name} receives Llama only as part of an integrated "
                                      f"end user product (clause 1.b.ii).")
            return redirect("portal:organisation", pk=organisation.pk)
    return _organisation_page(request, access, organisation, exemption_form=form, status=400)


@login_required
@require_POST
def organisation_exemption_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    organisation = _organisation_or_404(access, pk)
    access.require(Scope.ADMIN, organisation.pk)
    try:
        licensing_services.exemption_withdraw(organisation=organisation, withdrawn_by=access.label)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Withdrawn: section 2 (the 700M clause) applies to {organisation.name} again.")
    return redirect("portal:organisation", pk=organisation.pk)


# --- alerts, policy, webhooks -----------------------------------------------------------------------------


@login_required
@require_GET
def alert_list(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    groups = list(access.groups())  # by name, the model's ordering
    show = request.GET.get("show", "all")
    group_id = request.GET.get("group")
    alerts = compliance_selectors.alert_list(groups=groups, open_only=show == "open",
                                             group_id=int(group_id) if group_id and group_id.isdigit() else None)
    page = _page(request, alerts)
    administered = {g.pk for g in groups if access.is_group_admin(g)}
    writable = administered  # acknowledging an alert is the group admins' call
    return render(request, "portal/alert_list.html", {
        "page": page, "groups": groups, "writable": writable, "administered": administered, "show": show,
        "group_id": group_id,
    })


@login_required
@require_POST
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    alert = compliance_selectors.alert_get(groups=access.groups(), pk=pk)
    if alert is None:
        raise Http404("No such alert.")
    access.require_group_admin(alert.group)
    try:
        evaluation_services.alert_acknowledge(alert=alert, actor=access.label, note=request.POST.get("note", ""))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Alert acknowledged.")
    return redirect(request.POST.get("next", "") if _safe_next(request) else reverse("portal:alerts"))


def _safe_next(request: HttpRequest) -> bool:
    from django.utils.http import url_has_allowed_host_and_scheme

    target = request.POST.get("next", "")
    return bool(target) and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                            require_https=request.is_secure())


@login_required
@require_http_methods(["GET", "POST"])
def policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """The group's policy, read by every member; changed by admins and owners, checked by the API's rules."""
    access = access_of(request)
    group = access.group_or_404(pk)
    policy = evaluation_services.group_policy_get(group=group)
    can_edit = access.is_group_admin(group)
    if request.method == "POST":
        access.require_group_admin(group)
    form = forms.PolicyForm(request.POST or None, initial=forms.PolicyForm.initial_for(policy))
    if request.method == "POST" and form.is_valid():
        checked = PolicySerializer(policy, data=form.as_policy_data())
        if checked.is_valid():
            evaluation_services.group_policy_update(policy=policy, actor=access.label, **checked.validated_data)
            messages.success(request, "Alert policy saved.")
            return redirect("portal:policy", pk=group.pk)
        for field, errors in checked.errors.items():
            for error in errors if isinstance(errors, list) else [errors]:
                form.add_error(field if field in form.fields else None, _api_error_text(error, field))
    return render(request, "portal/policy_form.html", {"group": group, "policy": policy, "form": form,
                                                       "can_edit": can_edit}, status=_status(form))


def _api_error_text(error: Any, field: str) -> str:
    if isinstance(error, dict):  # a list field's per-item errors: {index: [message]}
        return "; ".join(str(m) for messages_ in error.values() for m in messages_)
    text = str(error)
    if field == "levels":
        text = text.replace("0.999", "99.9%").replace("0.01", "1%")
    return text


def _webhook_or_404(access: Access, pk: int) -> WebhookEndpoint:
    endpoint = webhook_selectors.webhook_endpoint_get(groups=access.groups(), pk=pk)
    if endpoint is None:
        raise Http404("No such webhook endpoint.")
    return endpoint


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def webhook_list(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    can_edit = access.is_group_admin(group)
    form = forms.WebhookForm(request.POST or None)
    created = secret = None
    if request.method == "POST":
        access.require_group_admin(group)
        if form.is_valid():
            try:
                created, secret = webhook_services.webhook_endpoint_create(
                    group=group, created_by=access.label, **form.cleaned_data)
            except ValidationError as exc:
                forms.add_service_errors(form, exc)
            else:
                form = forms.WebhookForm()
    endpoints = webhook_selectors.webhook_endpoint_list(group=group)
    return render(request, "portal/webhook_list.html", {
        "group": group, "endpoints": endpoints, "form": form, "can_edit": can_edit, "created": created,
        "secret": secret,  # shown once, in this response only: never stored, logged or put in a message
    }, status=_status(form))


@login_required
@require_GET
def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    endpoint = _webhook_or_404(access, pk)
    deliveries = webhook_selectors.webhook_delivery_list(endpoint=endpoint)
    return render(request, "portal/webhook_detail.html", {
        "endpoint": endpoint, "page": _page(request, deliveries, 25),
        "can_edit": access.is_group_admin(endpoint.group_id),
    })


@login_required
@require_POST
def webhook_test(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    endpoint = _webhook_or_404(access, pk)
    access.require_group_admin(endpoint.group_id)
    webhook_services.webhook_test_send(endpoint=endpoint, actor=access.label)
    messages.success(request, "Test event queued; its delivery appears below.")
    return redirect("portal:webhook", pk=endpoint.pk)


@login_required
@require_POST
def webhook_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    endpoint = _webhook_or_404(access, pk)
    access.require_group_admin(endpoint.group_id)
    webhook_services.webhook_endpoint_update(endpoint=endpoint, actor=access.label, active=not endpoint.active)
    messages.success(request, "Endpoint resumed." if endpoint.active else "Endpoint paused.")
    return redirect("portal:webhook", pk=endpoint.pk)


@login_required
@require_POST
def webhook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    endpoint = _webhook_or_404(access, pk)
    access.require_group_admin(endpoint.group_id)
    group_id = endpoint.group_id
    webhook_services.webhook_endpoint_delete(endpoint=endpoint, actor=access.label)
    messages.success(request, "Endpoint deleted.")
    return redirect("portal:webhooks", pk=group_id)


# --- deployments ------------------------------------------------------------------------------------------

def _deployment_or_404(access: Access, pk: int) -> Deployment:
    deployment = inference_selectors.deployment_get(organisations=access.organisations(), pk=pk)
    if deployment is None:
        raise Http404("No such deployment.")
    return deployment


@login_required
@require_GET
def deployment_list(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    org_ids = access.organisation_ids()
    show_stopped = request.GET.get("stopped") == "1"
    deployments = inference_selectors.deployment_list(organisations=org_ids, include_stopped=show_stopped)
    page = _page(request, deployments)
    settled = all(pool_views.settled(deployment) for deployment in page)
    if request.GET.get("format") == "live":  # the table, for the page's script while a deployment changes
        html = render_to_string("portal/_deployment_table.html", {"page": page}, request=request)
        return JsonResponse({"settled": settled, "html": html}, headers={"Cache-Control": "no-store"})
    live_query = request.GET.copy()
    live_query["format"] = "live"
    # GPU placement per node: staff see the whole pool; a tenant the nodes its replicas run on, other
    # tenants' GPUs shown only as "in use".
    nodes = (inference_selectors.node_placement_unscoped() if access.is_staff
             else inference_selectors.node_placement(organisations=org_ids))
    return render(request, "portal/deployment_list.html", {
        "page": page, "nodes": nodes, "org_ids": set(org_ids), "show_stopped": show_stopped, "settled": settled,
        "live_url": f"{request.path}?{live_query.urlencode()}",
        "writable": set(access.organisation_ids(Scope.WRITE)),
    })


@login_required
@require_http_methods(["GET", "POST"])
def deployment_create(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    organisations = access.organisations(Scope.WRITE)
    if not organisations.exists():
        raise PermissionDenied(f"Your role does not allow requesting deployments: it needs {needs(Scope.WRITE)}.")
    form = forms.DeploymentForm(request.POST or None, organisations=organisations)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        data["quantization"] = data.get("quantization") or ""
        try:
            deployment = inference_services.deployment_request(created_by=access.label, **data)
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        except IntegrityError:
            form.add_error("served_model_name", "This name is already deployed by the organisation.")
        else:
            messages.success(request, f"Deployment {deployment.served_model_name} requested; the pool brings it up.")
            return redirect("portal:deployment", pk=deployment.pk)
    return render(request, "portal/deployment_form.html", {"form": form}, status=_status(form))


@login_required
@require_GET
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    deployment = _deployment_or_404(access, pk)
    return render(request, "portal/deployment_detail.html", {
        "deployment": deployment, "can_write": access.can(Scope.WRITE, deployment.organisation_id),
        "settled": pool_views.settled(deployment),
        "scale_form": forms.ScaleForm(initial={"replicas": deployment.replicas}),
    })


@login_required
@require_POST
def deployment_scale(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    deployment = _deployment_or_404(access, pk)
    access.require(Scope.WRITE, deployment.organisation_id)
    form = forms.ScaleForm(request.POST)
    if form.is_valid():
        try:
            inference_services.deployment_scale(deployment=deployment, replicas=form.cleaned_data["replicas"],
                                                actor=access.label)
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        else:
            messages.success(request, f"Scaling to {form.cleaned_data['replicas']} replicas.")
            return redirect("portal:deployment", pk=deployment.pk)
    return render(request, "portal/deployment_detail.html", {"deployment": deployment, "can_write": True,
                                                             "settled": pool_views.settled(deployment),
                                                             "scale_form": form}, status=400)


def _confirm(request: HttpRequest, *, title: str, consequence: str, button: str, cancel: str) -> HttpResponse:
    """The page that asks before an action that cannot be undone; its form POSTs back to the same URL, so it
    works without JavaScript."""
    return render(request, "portal/confirm.html", {"title": title, "consequence": consequence, "button": button,
                                                   "cancel": cancel})


@login_required
@require_http_methods(["GET", "POST"])
def deployment_delete(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    deployment = _deployment_or_404(access, pk)
    access.require(Scope.WRITE, deployment.organisation_id)
    if request.method == "GET":
        return _confirm(request, title=f"Delete deployment {deployment.served_model_name}?",
                        consequence="Its replicas drain and stop, its GPUs are freed, and clients calling "
                                    f"“{deployment.served_model_name}” get an error. The record stays for the "
                                    "audit trail; serving again needs a new deployment.",
                        button="Delete deployment", cancel=reverse("portal:deployment", args=[deployment.pk]))
    inference_services.deployment_delete(deployment=deployment, actor=access.label)
    messages.success(request, f"Deployment {deployment.served_model_name} is draining and will stop.")
    return redirect("portal:deployment", pk=deployment.pk)


# --- API keys ---------------------------------------------------------------------------------------------


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def key_list(request: HttpRequest) -> HttpResponse:
    """Keys of the caller's organisations. Members and up create keys holding at most their own scopes (the
    API's rule: no credential mints a stronger one); the secret is in this one response and nowhere else."""
    access = access_of(request)
    writable = access.organisations(Scope.WRITE)
    org_ids = access.organisation_ids()
    form = created = secret = None
    if writable.exists():
        held = frozenset().union(*(access.scopes_in(o) for o in access.organisation_ids(Scope.WRITE)))
        form = forms.ApiKeyForm(request.POST or None, organisations=writable, scopes=held)
    if request.method == "POST":
        if form is None:
            raise PermissionDenied(f"Your role does not allow creating keys: it needs {needs(Scope.WRITE)}.")
        if form.is_valid():
            data = form.cleaned_data
            beyond = sorted(set(data["scopes"]) - access.scopes_in(data["organisation"].pk))
            if beyond:
                form.add_error("scopes", f"Your role in {data['organisation']} cannot grant: {', '.join(beyond)}.")
            else:
                try:
                    created, secret = api_key_create(
                        organisation=data["organisation"], name=data["name"], scopes=data["scopes"],
                        product=data["product"], expires_at=data["expires_on"], created_by=access.label)
                except ValueError as exc:
                    forms.add_service_errors(form, exc)
                else:
                    form = forms.ApiKeyForm(organisations=writable, scopes=held)
    keys = access_selectors.api_key_list(organisation_ids=org_ids)
    page = _page(request, keys)
    revocable = {k.pk for k in page if _may_revoke(access, k)}
    return render(request, "portal/key_list.html", {
        "page": page, "form": form, "created": created, "secret": secret, "revocable": revocable,
    }, status=_status(form) if form is not None else 200)


def _may_revoke(access: Access, key: ApiKey) -> bool:
    scopes = access.scopes_in(key.organisation_id)
    return Scope.WRITE in scopes and set(key.scopes) <= scopes


@login_required
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    key = access_selectors.api_key_get(organisations=access.organisations(), pk=pk)
    if key is None:
        raise Http404("No such key.")
    if not _may_revoke(access, key):
        raise PermissionDenied(f"Your role cannot revoke this key: revoking needs 'write' and every scope the key "
                               f"holds ({', '.join(key.scopes)}) in {key.organisation.name}.")
    if request.method == "GET":
        return _confirm(request, title=f"Revoke key {key.name} ({key.prefix}…)?",
                        consequence="Every call with this key is refused from now on (within seconds at the "
                                    "gateway). A revoked key cannot be restored: a new key has a new secret.",
                        button="Revoke key", cancel=reverse("portal:keys"))
    api_key_revoke(api_key=key, revoked_by=access.label)
    messages.success(request, f"Key {key.prefix}… revoked.")
    return redirect("portal:keys")


# --- audit ------------------------------------------------------------------------------------------------


@login_required
@require_GET
def audit_list(request: HttpRequest) -> HttpResponse:
    access = access_of(request)
    groups = access.groups()  # by name, the model's ordering
    events = (access_selectors.audit_events_unscoped() if access.is_staff
              else audit_events_visible(principal=access.principal))
    form = forms.AuditFilterForm(request.GET or None, groups=groups)
    events = access_selectors.audit_event_search(
        events=events, hidden_actors=key_actors_hidden_from(access.principal),
        **(form.cleaned_data if form.is_valid() else {}))
    page = _page(request, events)
    actors = ActorView(access.principal)
    for event in page:
        event.data_json = json.dumps(event.data, indent=1, sort_keys=True, default=str)
        event.hash_hidden = actors.hides([event.actor, event.data])  # see ActorView.hides
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "portal/audit_list.html", {
        "page": page, "form": form, "chain": audit_verify_cached(), "query": query.urlencode(),
    }, status=_status(form) if form.is_bound else 200)


# --- members ----------------------------------------------------------------------------------------------

def _is_owner(access: Access, organisation_id: int) -> bool:
    return access.is_staff or licensing_selectors.user_role(
        user=access.user, organisation_id=organisation_id) == Membership.Role.OWNER


def _role_in(access: Access, organisation_id: int) -> str:
    """The caller's role in the organisation; staff act as owners, as in the Django admin."""
    if access.is_staff:
        return Membership.Role.OWNER
    return licensing_selectors.user_role(user=access.user, organisation_id=organisation_id)


def _grantable_roles(access: Access, manageable: QuerySet) -> list[str]:
    """Roles the caller may invite to some organisation they manage (the service checks each organisation)."""
    if access.is_staff:
        return list(licensing_services.ROLE_ORDER)
    held = licensing_selectors.user_roles(user=access.user, organisations=manageable)
    return max((licensing_services.roles_up_to(role) for role in held), key=len, default=[])


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def member_list(request: HttpRequest) -> HttpResponse:
    """People of the caller's organisations and their roles. Admins and owners invite people by email address (at
    most their own role), revoke pending invitations, change roles and remove members (only an owner touches the
    owner role, and an organisation always keeps one owner).

    Inviting answers the same whatever the address: no account is looked up, and nobody joins until they accept.
    The link is in the one response that created the invitation (and in the email) and nowhere else.
    """
    access = access_of(request)
    manageable = access.organisations(Scope.ADMIN)
    form = invited = link = None
    emailed = False
    if manageable.exists():
        roles = _grantable_roles(access, manageable)
        form = forms.InvitationForm(request.POST or None, organisations=manageable, roles=roles)
    if request.method == "POST":
        if form is None:
            raise PermissionDenied(f"Your role does not allow inviting people: it needs {needs(Scope.ADMIN)}.")
        if form.is_valid():
            data = form.cleaned_data
            try:
                invited, token = licensing_services.invitation_create(
                    organisation=data["organisation"], email=data["email"], role=data["role"], actor=access.label,
                    actor_role=_role_in(access, data["organisation"].pk))
            except ValidationError as exc:
                forms.add_service_errors(form, exc)
            else:
                link = _invitation_link(token)
                emailed = licensing_services.invitation_email_send(invitation=invited, link=link)
                form = forms.InvitationForm(organisations=manageable, roles=roles)
    members = licensing_selectors.membership_list(organisation_ids=access.organisation_ids())
    invitations = portal_selectors.pending_invitations(organisations=manageable) if form is not None else []
    return render(request, "portal/member_list.html", {
        "page": _page(request, members), "form": form, "invited": invited, "link": link, "emailed": emailed,
        "invitations": invitations, "lifetime_days": licensing_services.invitation_lifetime().days,
        "manage_ids": set(access.organisation_ids(Scope.ADMIN)), "roles": Membership.Role.choices,
    }, status=_status(form) if form is not None else 200)


def _invitation_link(token: str) -> str:
    # SITE_URL, not the request's host: the emailed link must not follow a forged Host header.
    return f"{settings.SITE_URL.rstrip('/')}{reverse('portal:invitation-link', args=[token])}"


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    invitation = licensing_selectors.invitation_get(organisations=access.organisations(), pk=pk)
    if invitation is None:
        raise Http404("No such invitation.")
    access.require(Scope.ADMIN, invitation.organisation_id)
    try:
        licensing_services.invitation_revoke(invitation=invitation, actor=access.label,
                                             actor_role=_role_in(access, invitation.organisation_id))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"The invitation of {invitation.email} to {invitation.organisation.name} is "
                                  f"revoked: its link no longer works.")
    return redirect("portal:members")


def _membership_or_404(access: Access, pk: int) -> Membership:
    membership = licensing_selectors.membership_get(organisations=access.organisations(), pk=pk)
    if membership is None:
        raise Http404("No such member.")
    access.require(Scope.ADMIN, membership.organisation_id)
    return membership


@login_required
@require_POST
def member_role(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    membership = _membership_or_404(access, pk)
    form = forms.MemberRoleForm(request.POST)
    if not form.is_valid():
        # An ErrorList iterates as its messages (str); the stubs type its items as ValidationError | str.
        messages.error(request, f"Role: {'; '.join(str(message) for message in form.errors['role'])}")
        return redirect("portal:members")
    try:
        licensing_services.membership_change_role(membership=membership, role=form.cleaned_data["role"],
                                                  actor=access.label,
                                                  actor_is_owner=_is_owner(access, membership.organisation_id))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{membership.user.get_username()} is now {form.cleaned_data['role']} of "
                                  f"{membership.organisation.name}.")
    return redirect("portal:members")


@login_required
@require_http_methods(["GET", "POST"])
def member_remove(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    membership = _membership_or_404(access, pk)
    if request.method == "GET":
        return _confirm(request, title=f"Remove {membership.user.get_username()} from "
                                       f"{membership.organisation.name}?",
                        consequence=f"They lose their {membership.get_role_display().lower()} role and every page "
                                    f"of {membership.organisation.name} at once. Their keys stay until revoked; "
                                    "joining again needs a new invitation.",
                        button="Remove member", cancel=reverse("portal:members"))
    try:
        licensing_services.membership_remove(membership=membership, actor=access.label,
                                             actor_is_owner=_is_owner(access, membership.organisation_id))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{membership.user.get_username()} was removed from {membership.organisation.name}.")
    return redirect("portal:members")


# --- invitations: the invitee's side ------------------------------------------------------------------------
#
# The link's URL holds the token. Its one view puts the token in the session and redirects to a URL without it,
# where everything else happens (as Django's password reset does): no later page, login redirect, Referer or
# django.request warning for a 4xx answer carries the token. Opening the link needs no login: the token is the
# credential.

INVITATION_SESSION_KEY = "_corral_invitation_token"
NO_INVITATION = "No invitation is open here: open the link of your invitation again, checking that it was copied whole."


@never_cache
@require_GET
def invitation_link(request: HttpRequest, token: str) -> HttpResponse:
    """Keep a token that opens an invitation (in any state: the next page says which) in the session. A token
    that opens none is worthless, so its 404 may be logged; and no session is created for it."""
    if licensing_services.invitation_for_token(token=token) is None:
        return _invitation_page(request, problem=NO_INVITATION, status=404)
    request.session[INVITATION_SESSION_KEY] = token
    response = redirect("portal:invitation")
    response["Referrer-Policy"] = "no-referrer"
    return response


def _invitation_page(request: HttpRequest, *, invitation: Invitation | None = None, problem: str = "",
                     signup_form: forms.InvitationSignupForm | None = None, error: str = "",
                     status: int = 200) -> HttpResponse:
    if invitation is not None and not request.user.is_authenticated and signup_form is None:
        signup_form = forms.InvitationSignupForm()
    return render(request, "portal/invitation.html", {
        "invitation": invitation, "problem": problem, "signup_form": signup_form, "error": error,
        "inviter": invitation.created_by.removeprefix("user:") if invitation else "",
        "email_differs": bool(invitation and request.user.is_authenticated
                              and (request.user.email or "").lower() != invitation.email.lower()),
    }, status=status)


def _unusable(request: HttpRequest, exc: licensing_services.InvitationUnusable) -> HttpResponse:
    request.session.pop(INVITATION_SESSION_KEY, None)
    return _invitation_page(request, problem=f"{exc} Ask an admin of the organisation for a new one.", status=410)


def _open_invitation(request: HttpRequest) -> Invitation | HttpResponse:
    """The pending invitation of the link opened in this session, or the page saying there is none (404) or it can
    no longer be used (410)."""
    token = request.session.get(INVITATION_SESSION_KEY, "")
    actor = access_of(request).label if request.user.is_authenticated else "anonymous"
    try:
        return licensing_services.invitation_open(token=token, actor=actor)
    except Invitation.DoesNotExist:
        request.session.pop(INVITATION_SESSION_KEY, None)
        return _invitation_page(request, problem=NO_INVITATION, status=404)
    except licensing_services.InvitationUnusable as exc:
        return _unusable(request, exc)


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_detail(request: HttpRequest) -> HttpResponse:
    """What the invitation offers. Signed in, the person accepts it as themselves (POST); signed out, they log in
    and come back, or create an account (``invitation_signup``). Whoever holds the link may accept it: the link
    is the proof, as the email address it was sent to is for a new account."""
    opened = _open_invitation(request)
    if isinstance(opened, HttpResponse):
        return opened
    if request.method == "GET":
        return _invitation_page(request, invitation=opened)
    if not request.user.is_authenticated:
        return redirect(f"{reverse('portal:login')}?next={request.path}")
    try:
        membership = licensing_services.invitation_accept(invitation=opened, user=request.user)
    except ValidationError as exc:
        return _invitation_page(request, invitation=opened, error=" ".join(exc.messages), status=400)
    except licensing_services.InvitationUnusable as exc:
        return _unusable(request, exc)
    request.session.pop(INVITATION_SESSION_KEY, None)
    messages.success(request, f"You joined {membership.organisation.name} as {membership.get_role_display().lower()}.")
    return redirect("portal:overview")


@never_cache
@require_POST
def invitation_signup(request: HttpRequest) -> HttpResponse:
    """A new account for the holder of the link, with the invitation's email address, accepting it at once."""
    if request.user.is_authenticated:
        return redirect("portal:invitation")  # accept as yourself, or log out first
    opened = _open_invitation(request)
    if isinstance(opened, HttpResponse):
        return opened
    form = forms.InvitationSignupForm(request.POST)
    if form.is_valid():
        try:
            membership = licensing_services.invitation_accept_new_account(
                invitation=opened, username=form.cleaned_data["username"], password=form.cleaned_data["password"])
        except ValidationError as exc:
            forms.add_service_errors(form, exc)
        except licensing_services.InvitationUnusable as exc:
            return _unusable(request, exc)
        else:
            auth_login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            request.session.pop(INVITATION_SESSION_KEY, None)
            messages.success(request, f"Welcome, {membership.user.get_username()}: you joined "
                                      f"{membership.organisation.name} as {membership.get_role_display().lower()}.")
            return redirect("portal:overview")
    return _invitation_page(request, invitation=opened, signup_form=form, status=400)

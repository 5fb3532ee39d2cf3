"""After "over": a group's declared figures and Meta grants, read by its members and recorded by those the API
lets record them (declarations: the group's admins; grants: Corral staff). Both records are append-only, as in
the API: a declaration is corrected by declaring again (every figure of a month counts and the worst decides),
a grant by recording it again superseding the old one, or withdrawing it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms as django_forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from access.models import Scope
from governance.compliance import selectors as compliance_selectors
from governance.compliance import services as evaluation_services
from licensing import selectors as licensing_selectors
from licensing import services as licensing_services
from portal import forms
from portal.access import access_of

STAFF_RECORD_GRANTS = ("Meta grants are recorded by Corral staff (the API's rule: only staff record or withdraw a "
                       "grant). Send Meta's letter to your Corral operator.")


def _record(request: HttpRequest, form: django_forms.Form, *, record: Callable[[dict[str, Any]], Any],
            done: Callable[[Any], str], then: str, **url_args: Any) -> HttpResponse | None:
    """Call the service with the form's cleaned data, say what it recorded and redirect to ``then``; None when the
    form or the service (its ValidationError, put on the form) refused, so the page shows the form again."""
    if not form.is_valid():
        return None
    try:
        recorded = record(form.cleaned_data)
    except ValidationError as exc:
        forms.add_service_errors(form, exc)
        return None
    messages.success(request, done(recorded))
    return redirect(then, **url_args)


@login_required
@require_http_methods(["GET", "POST"])
def declaration_list(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    can_declare = access.is_group_admin(group)
    action = request.POST.get("action", "declare")
    # Admins of the group's other organisations propose a figure; a group admin confirms or rejects it.
    proposers = licensing_selectors.organisation_list_in_group(organisations=access.organisations(Scope.ADMIN),
                                                               group=group)
    can_propose = not can_declare and proposers.exists()
    posted = request.method == "POST"
    proposal_form = forms.ProposalForm(request.POST if posted and action == "propose" else None,
                                       organisations=proposers, prefix="proposal") if can_propose else None
    if request.method == "POST" and action in ("confirm", "reject"):
        access.require_group_admin(group)
        chosen = request.POST.get("proposal", "")
        proposal = compliance_selectors.declaration_proposal_get(group=group, pk=int(chosen) if chosen.isdigit() else 0)
        if proposal is None:
            raise Http404("No such proposal.")
        try:
            decided = evaluation_services.declaration_proposal_decide(
                proposal=proposal, confirm=action == "confirm", actor=access.label,
                note=request.POST.get("note", "")[:2000])
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Proposal of {decided.mau:,} for {decided.month:%B %Y} {decided.status}.")
        return redirect("portal:declarations", pk=group.pk)
    if request.method == "POST" and action == "propose":
        if proposal_form is None:
            raise PermissionDenied("Proposing a figure needs the admin role in one of the group's organisations; "
                                   "group admins declare it directly.")
        proposed = _record(
            request, proposal_form, then="portal:declarations", pk=group.pk,
            record=lambda data: evaluation_services.declaration_propose(
                group=group, organisation=data["organisation"], month=data["month"], mau=data["mau"],
                evidence=data["evidence"], proposed_by=access.label),
            done=lambda proposal: f"Proposed {proposal.mau:,} for {proposal.month:%B %Y}; it counts once a group "
                                  f"admin confirms it.")
        if proposed is not None:
            return proposed
    form = forms.DeclarationForm(request.POST if posted and action == "declare" else None) if can_declare else None
    if request.method == "POST" and action == "declare":
        access.require_group_admin(group)
        assert form is not None
        declared = _record(
            request, form, then="portal:declarations", pk=group.pk,
            record=lambda data: evaluation_services.declared_figure_record(
                group=group, month=data["month"], mau=data["mau"], evidence=data["evidence"],
                declared_by=access.label, lower=data["lower"], upper=data["upper"]),
            done=lambda figure: f"Declared {figure.mau:,} monthly active users for {figure.month:%B %Y}; the group "
                                f"is evaluated again.")
        if declared is not None:
            return declared
    declarations = compliance_selectors.declared_figure_list(group=group)
    proposals = compliance_selectors.declaration_proposal_list(group=group)
    invalid = any(f is not None and f.is_bound and f.errors for f in (form, proposal_form))
    return render(request, "portal/declaration_list.html", {
        "group": group, "declarations": declarations, "form": form, "can_declare": can_declare,
        "proposals": proposals, "proposal_form": proposal_form,
    }, status=400 if invalid else 200)


@login_required
@require_http_methods(["GET", "POST"])
def grant_list(request: HttpRequest, pk: int) -> HttpResponse:
    access = access_of(request)
    group = access.group_or_404(pk)
    grants = licensing_selectors.meta_grant_list(group=group)
    form = forms.GrantForm(request.POST or None, grants=grants) if access.is_staff else None
    if request.method == "POST":
        if form is None:
            raise PermissionDenied(STAFF_RECORD_GRANTS)
        recorded = _record(
            request, form, then="portal:grants", pk=group.pk,
            record=lambda data: licensing_services.grant_record(group=group, recorded_by=access.label, **data),
            done=lambda grant: f"Recorded: {'withdrawal of ' if grant.revoked else ''}grant {grant.reference}; "
                               f"the group is evaluated again.")
        if recorded is not None:
            return recorded
    return render(request, "portal/grant_list.html", {
        "group": group, "grants": grants, "form": form, "staff_only": STAFF_RECORD_GRANTS,
    }, status=400 if form is not None and form.is_bound and form.errors else 200)

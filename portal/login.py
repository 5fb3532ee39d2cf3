"""Password log-ins throttled by django-axes (config/settings.py, "The web portal"): what a locked-out person
sees, and the audit entry a lockout leaves."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.forms import AuthenticationForm
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from access.audit import audit_record
from access.models import Organisation
from licensing import selectors as licensing_selectors

LOCKED_OUT = ("Too many failed log-ins for this account or from this address: log-ins are paused for "
              "{minutes} minutes after the last failed attempt, even with the right password. Try again later, "
              "or ask an administrator to unlock the account.")


def locked_out(request: HttpRequest, original_response: HttpResponse | None = None,
               credentials: dict[str, Any] | None = None) -> HttpResponse:
    """The login page again (the portal's, or the admin's for /admin/), saying why the log-in was refused;
    429 Too Many Requests. No field says whether the password was right."""
    form = AuthenticationForm(request, data=request.POST)
    message = LOCKED_OUT.format(minutes=int(settings.AXES_COOLOFF_TIME.total_seconds() // 60))
    # Set, not add_error(): that would validate the form, authenticating once more. django-stubs leave out the
    # private BaseForm._errors.
    form._errors = ErrorDict(  # type: ignore[attr-defined]
        {"__all__": form.error_class([message], error_class="nonfield")})
    if request.path.startswith("/admin/"):
        context = {**admin.site.each_context(request), "form": form, "title": "Log in",
                   "app_path": request.get_full_path(), "username": request.user.get_username()}
        return render(request, "admin/login.html", context, status=429)
    context = {"form": form, "next": request.POST.get("next", ""), "locked_out": True}
    return render(request, "portal/login.html", context, status=429)


def audit_lockout(sender: Any, request: HttpRequest, username: str | None, ip_address: str | None,
                  **kwargs: Any) -> None:
    """One audit entry when a lockout starts, in the audit log of each organisation the account belongs to
    (or none, for an unknown name or a staff account). Axes sends its signal again for every attempt while
    locked out; only the failure that reached the limit counts its failures, and only it is recorded."""
    failures = getattr(request, "axes_failures_since_start", None)  # set by axes on the request
    if failures is None:
        return
    account = licensing_selectors.account_by_username_unscoped(username=username) if username else None
    organisations: list[Organisation | None] = (
        list(licensing_selectors.user_organisations(user=account)) if account else [])
    data = {"username": username or "", "ip_address": ip_address or "", "path": request.path,
            "failures": failures,
            "cooloff_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)}
    for organisation in organisations or [None]:
        audit_record(action="login.locked_out", actor=f"login:{ip_address or 'unknown'}", organisation=organisation,
                     obj=account, data=data)

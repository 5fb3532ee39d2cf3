"""Invitations in a real browser (Debian's headless Chromium, as tests/portal/test_browser.py): an admin invites two
people, one without an account who creates one on the invitation's page and one of another tenant who accepts with
theirs; at a phone's width neither page scrolls sideways.

Screenshots go to $CORRAL_SCREENSHOTS_DIR when set (to look at them), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from access.models import Invitation, Membership
from licensing.services import organisation_create
from tests.portal.test_browser import PASSWORD, _log_in, _log_out, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("CORRAL_SCREENSHOTS_DIR") or tmp_path)


def _shot(page: Any, shots: Path, name: str) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def _fits_a_phone(page: Any) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], f"{page.url} scrolls sideways"


def test_it_walks_two_invitations_through_the_browser(live_server: Any, browser: Any, settings: Any,  # noqa: F811
                                                      shots: Path) -> None:
    from playwright.sync_api import expect

    settings.SITE_URL = live_server.url  # the link shown and emailed points at this server
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"  # the embedded default: no mail server
    acme = organisation_create(name="Acme Social", group_name="Acme Holdings", actor="setup")
    globex = organisation_create(name="Globex", group_name="Globex Holdings", actor="setup")
    users = get_user_model().objects
    Membership.objects.create(user=users.create_user("adam", "adam@acme.example", PASSWORD), organisation=acme,
                              role=Membership.Role.ADMIN)
    Membership.objects.create(user=users.create_user("oscar", "oscar@globex.example", PASSWORD), organisation=globex,
                              role=Membership.Role.OWNER)
    base = live_server.url

    admin = browser.new_page(viewport=DESKTOP)
    _log_in(admin, base, "adam")
    admin.get_by_role("link", name="Members").click()
    expect(admin.get_by_label("Role:", exact=True)).not_to_contain_text("Owner")  # at most the admin's own role
    links = {}
    for email, role in [("oscar@globex.example", "Viewer"), ("nadia@example.com", "Member")]:
        admin.get_by_label("Email:", exact=True).fill(email)
        admin.get_by_label("Role:", exact=True).select_option(label=role)
        admin.get_by_role("button", name="Invite", exact=True).click()
        expect(admin.get_by_role("alert")).to_contain_text("pass it on yourself")
        links[email] = admin.locator("#invitation-link").inner_text().strip()
    pending = admin.locator("table", has=admin.get_by_role("columnheader", name="Sent to"))
    expect(pending.locator("tbody tr")).to_have_count(2)
    expect(admin.locator("body")).not_to_contain_text("oscar@globex.example is a member")
    _shot(admin, shots, "members-1366")
    admin.set_viewport_size(PHONE)
    _fits_a_phone(admin)
    _shot(admin, shots, "members-390")
    admin.set_viewport_size(DESKTOP)

    # Nadia has no account: the link's page offers one, with the invitation's address.
    nadia = browser.new_context(viewport=DESKTOP).new_page()
    nadia.goto(links["nadia@example.com"])
    expect(nadia).to_have_url(re.compile(r"/invitation/$"))  # the token left the address bar
    expect(nadia.get_by_role("heading", name="Join Acme Social", level=1)).to_be_visible()
    _shot(nadia, shots, "invitation-signed-out-1366")
    nadia.set_viewport_size(PHONE)
    _fits_a_phone(nadia)
    _shot(nadia, shots, "invitation-signed-out-390")
    nadia.get_by_label("Username").fill("nadia")
    nadia.get_by_label("Password:", exact=True).fill("short")
    nadia.get_by_label("Password again:", exact=True).fill("short")
    nadia.get_by_role("button", name="Create account and join").click()
    expect(nadia.locator("#id_password_error")).to_contain_text("too short")
    _shot(nadia, shots, "invitation-error-390")
    nadia.set_viewport_size(DESKTOP)
    nadia.get_by_label("Password:", exact=True).fill(PASSWORD)
    nadia.get_by_label("Password again:", exact=True).fill(PASSWORD)
    nadia.get_by_role("button", name="Create account and join").click()
    expect(nadia.get_by_role("status")).to_contain_text("Welcome, nadia: you joined Acme Social as member")
    assert users.get(username="nadia").email == "nadia@example.com"

    # Oscar, Globex's owner, accepts with his account after logging in from the link's page.
    oscar = browser.new_context(viewport=DESKTOP).new_page()
    oscar.goto(links["oscar@globex.example"])
    oscar.get_by_role("link", name="Log in to accept").click()
    oscar.get_by_label("Username").fill("oscar")
    oscar.get_by_label("Password").fill(PASSWORD)
    oscar.get_by_role("button", name="Log in").click()
    expect(oscar.get_by_role("heading", name="Accept as oscar")).to_be_visible()
    _shot(oscar, shots, "invitation-signed-in-1366")
    oscar.set_viewport_size(PHONE)
    _fits_a_phone(oscar)
    _shot(oscar, shots, "invitation-signed-in-390")
    oscar.get_by_role("button", name="Accept invitation").click()
    expect(oscar.get_by_role("status")).to_contain_text("You joined Acme Social as viewer")
    # The link worked once.
    oscar.goto(links["oscar@globex.example"])
    expect(oscar.get_by_role("alert")).to_contain_text("already been used")
    _shot(oscar, shots, "invitation-used-390")

    admin.get_by_role("link", name="Members").click()
    expect(admin.locator("tbody").first).to_contain_text("nadia")
    expect(admin.locator("tbody").first).to_contain_text("oscar")
    expect(pending.locator("tbody")).to_have_text("No pending invitations.")
    assert not Invitation.objects.filter(accepted_at__isnull=True).exists()
    _log_out(admin)

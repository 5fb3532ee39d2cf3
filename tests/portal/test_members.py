"""Members in the portal: people join an organisation only by accepting an invitation; who may invite, re-role and
remove people, the owner rules, and that nothing of another group is reachable or revealed."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from access.models import AuditEvent, Invitation, Membership
from licensing.services import invitation_create
from tests.factories import UserFactory
from tests.portal.conftest import PASSWORD, Tenancy

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a long and unguessable passphrase"
ACCEPT, SIGNUP = "/invitation/", "/invitation/signup/"


def _membership(tenancy: Tenancy, who: str) -> Membership:
    return Membership.objects.get(user=tenancy.users[who], organisation=tenancy.organisation)


def _invite(client: Client, tenancy: Tenancy, email: str, role: str = "member") -> tuple[Any, str]:
    """Invite through the members page; the response and the path of the link it showed."""
    response = client.post("/members/", {"organisation": tenancy.organisation.pk, "email": email, "role": role})
    assert response.status_code == 200, response.content.decode()
    return response, urlsplit(response.context["link"]).path


def _open(client: Client, link: str) -> Any:
    """Open the invitation's link as a browser does: it redirects to the page without the token."""
    assert client.get(link)["Location"] == ACCEPT
    return client.get(ACCEPT)


def _accept(client: Client, link: str) -> Any:
    """Open the link and press Accept; the page's answer when it offers no button (404, 410)."""
    page = _open(client, link)
    return client.post(ACCEPT) if page.status_code == 200 else page


def _signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _text(response: Any) -> str:
    """The page as a person reads it: entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(response.content.decode()).split())


def _actions() -> list[str]:
    return list(AuditEvent.objects.filter(action__startswith="invitation.").order_by("seq")
                .values_list("action", flat=True))


# --- the member list ------------------------------------------------------------------------------------------


def test_it_shows_everyone_their_organisations_members_and_only_admins_the_invitations(login, tenancy) -> None:
    _invite(login("admin"), tenancy, "pending@example.com")
    page = login("viewer").get("/members/")
    assert page.status_code == 200
    body = page.content.decode()
    assert all(name in body for name in ("owner", "admin", "member", "viewer")) and "outsider" not in body
    assert "Invite a person" not in body and "/remove/" not in body
    assert "pending@example.com" not in body and "Pending invitations" not in body
    admin = login("admin").get("/members/").content.decode()
    assert "Invite a person" in admin and "pending@example.com" in admin


@pytest.mark.parametrize("who", ["viewer", "member"])
def test_it_lets_no_viewer_or_member_invite_or_change_members(login, tenancy, who) -> None:
    invitation, _ = invitation_create(organisation=tenancy.organisation, email="x@example.com", role="viewer",
                                      actor="setup", actor_role="owner")
    client = login(who)
    target = _membership(tenancy, "viewer")
    assert client.post("/members/", {"organisation": tenancy.organisation.pk, "email": "y@example.com",
                                     "role": "viewer"}).status_code == 403
    assert client.post(f"/members/{target.pk}/role/", {"role": "admin"}).status_code == 403
    assert client.post(f"/members/{target.pk}/remove/").status_code == 403
    assert client.post(f"/members/invitations/{invitation.pk}/revoke/").status_code == 403
    assert Membership.objects.filter(pk=target.pk, role="viewer").exists()
    assert Invitation.objects.count() == 1 and Invitation.objects.get().revoked_at is None


# --- the attack of the issue ----------------------------------------------------------------------------------


def test_it_no_longer_attaches_another_tenants_user_or_shows_their_email(login, tenancy) -> None:
    """Acme's admin "adds" Globex's owner by username: nobody is attached and Globex's address is never shown."""
    outsider = tenancy.users["outsider"]
    client = login("admin")
    by_username = client.post("/members/", {"organisation": tenancy.organisation.pk, "username": "outsider",
                                            "role": "member"})
    assert by_username.status_code == 400
    assert outsider.email not in by_username.content.decode()
    # Guessing the address only sends an invitation: Globex's owner is not a member until they accept.
    _invite(client, tenancy, outsider.email)
    assert not Membership.objects.filter(user=outsider, organisation=tenancy.organisation).exists()
    page = client.get("/members/")
    assert "outsider" not in [m.user.username for m in page.context["page"]]
    assert not get_user_model().objects.filter(username="outsider", memberships__organisation=tenancy.organisation)


def test_it_answers_the_same_whether_or_not_an_account_exists(login, tenancy) -> None:
    def answer(email: str) -> tuple[int, str, int, list[str]]:
        Invitation.objects.all().delete()
        mail.outbox.clear()
        before = AuditEvent.objects.count()
        response, path = _invite(login("admin"), tenancy, email)
        body = response.content.decode().replace(email, "EMAIL").replace(path, "LINK")
        body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "CSRF", body)
        body = re.sub(r"/members/invitations/\d+/", "/members/invitations/N/", body)
        body = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "WHEN", body)
        entries = AuditEvent.objects.filter(seq__gt=before)
        return response.status_code, body, len(mail.outbox), [f"{e.action}:{sorted(e.data)}" for e in entries]

    existing = answer(tenancy.users["outsider"].email)
    unknown = answer("nobody-by-this-name@example.com")
    assert existing == unknown
    assert existing[0] == 200 and existing[2] == 1


# --- invite and accept ----------------------------------------------------------------------------------------


def test_it_invites_an_existing_user_who_accepts_with_their_account(login, tenancy) -> None:
    outsider = tenancy.users["outsider"]
    response, link = _invite(login("admin"), tenancy, outsider.email, role="admin")
    assert link in response.content.decode() and response["Cache-Control"].startswith("max-age=0")
    [email] = mail.outbox
    assert email.to == [outsider.email] and response.context["link"] in email.body
    assert "Acme Social" in email.subject and response.context["emailed"]

    invitee = _signed_in(outsider)
    opened = invitee.get(link)
    assert opened.status_code == 302 and opened["Location"] == ACCEPT  # the token leaves the address bar
    page = invitee.get(ACCEPT)
    assert page.status_code == 200 and "Accept as outsider" in _text(page) and "not your account" not in _text(page)
    accepted = invitee.post(ACCEPT)
    assert accepted.status_code == 302 and accepted["Location"] == "/"
    assert Membership.objects.get(user=outsider, organisation=tenancy.organisation).role == "admin"
    invitation = Invitation.objects.get()
    assert invitation.accepted_by == outsider and invitation.accepted_at is not None
    assert _actions() == ["invitation.created", "invitation.accepted"]
    entry = AuditEvent.objects.get(action="invitation.accepted")
    assert entry.actor == "user:outsider" and entry.organisation == tenancy.organisation
    assert entry.data["email_matched"] is True and entry.data["new_account"] is False
    # Now a member, they see Acme as well as their own Globex.
    overview = _text(invitee.get("/"))
    assert "Acme Holdings" in overview and "Globex Holdings" in overview


def test_it_sends_a_signed_out_invitee_to_log_in_and_back(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, tenancy.users["outsider"].email)
    anonymous = Client()
    page = _open(anonymous, link).content.decode()
    assert f'href="/login/?next={ACCEPT}"' in page and "Create account and join" in page
    assert anonymous.post(ACCEPT)["Location"] == f"/login/?next={ACCEPT}"
    logged_in = anonymous.post("/login/", {"username": "outsider", "password": PASSWORD, "next": ACCEPT})
    assert logged_in.status_code == 302 and logged_in["Location"] == ACCEPT
    assert anonymous.post(ACCEPT).status_code == 302  # logging in kept the invitation in the session
    assert Membership.objects.filter(user=tenancy.users["outsider"], organisation=tenancy.organisation).exists()


def test_it_creates_an_account_for_an_invitee_without_one(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "Newcomer@Example.COM", role="viewer")
    client = Client()
    assert "I am new to Corral" in _text(_open(client, link))

    def attempt(username: str, password: str, again: str | None = None) -> Any:
        return client.post(SIGNUP, {"username": username, "password": password,
                                    "password_again": password if again is None else again})

    differ = attempt("newcomer", NEW_PASSWORD, "something else entirely")
    assert differ.status_code == 400 and "The two passwords differ" in _text(differ)
    weak = attempt("newcomer", "12345678")
    assert weak.status_code == 400 and "too common" in _text(weak)
    taken = attempt("Viewer", NEW_PASSWORD)
    assert taken.status_code == 400 and "This username is taken" in _text(taken)
    assert not get_user_model().objects.filter(username="newcomer").exists()
    assert Invitation.objects.get().accepted_at is None

    joined = attempt("newcomer", NEW_PASSWORD)
    assert joined.status_code == 302 and joined["Location"] == "/"
    user = get_user_model().objects.get(username="newcomer")
    assert user.email == "Newcomer@example.com" and user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(user=user).role == "viewer"
    assert "newcomer" in _text(client.get("/members/"))  # signed in as the new account
    # Through the login page: Client.login() authenticates without a request, which django-axes refuses.
    assert Client().post("/login/", {"username": "newcomer", "password": NEW_PASSWORD}).status_code == 302
    assert AuditEvent.objects.get(action="invitation.accepted").data["new_account"] is True


def test_it_lets_whoever_holds_the_link_accept_it_with_their_own_account(login, tenancy) -> None:
    """The link is the proof, as for a new account: a signed-in person whose address differs is told so, and may
    accept; the audit entry records that the addresses differed."""
    _, link = _invite(login("admin"), tenancy, "someone-else@example.com")
    invitee = _signed_in(tenancy.users["outsider"])
    assert "not your account's address" in _text(_open(invitee, link))
    assert invitee.post(ACCEPT).status_code == 302
    assert Membership.objects.filter(user=tenancy.users["outsider"], organisation=tenancy.organisation).exists()
    assert AuditEvent.objects.get(action="invitation.accepted").data["email_matched"] is False


def test_it_refuses_a_member_without_using_the_invitation_up(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "for-someone@example.com", role="admin")
    viewer = login("viewer")
    _open(viewer, link)
    refused = viewer.post(ACCEPT)
    assert refused.status_code == 400 and "already a member of Acme Social" in _text(refused)
    assert _membership(tenancy, "viewer").role == "viewer"
    assert Invitation.objects.get().accepted_at is None
    assert _accept(_signed_in(tenancy.users["outsider"]), link).status_code == 302


def test_it_signs_a_signed_in_person_up_only_as_themselves(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "x@example.com")
    client = _signed_in(tenancy.users["outsider"])
    _open(client, link)
    response = client.post(SIGNUP, {"username": "another", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD})
    assert response.status_code == 302 and response["Location"] == ACCEPT
    assert not get_user_model().objects.filter(username="another").exists()


def test_it_opens_nothing_without_a_link(tenancy) -> None:
    client = _signed_in(tenancy.users["outsider"])
    assert client.get(ACCEPT).status_code == 404
    assert client.post(ACCEPT).status_code == 404
    assert Client().post(SIGNUP, {"username": "x", "password": NEW_PASSWORD,
                                  "password_again": NEW_PASSWORD}).status_code == 404
    assert not get_user_model().objects.filter(username="x").exists()


# --- once, expiry, revocation ---------------------------------------------------------------------------------


def test_it_works_once(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "once@example.com")
    assert _accept(_signed_in(tenancy.users["outsider"]), link).status_code == 302
    late = UserFactory(username="late")
    again = _accept(_signed_in(late), link)
    assert again.status_code == 410 and "already been used" in _text(again)
    anonymous = Client()
    assert anonymous.get(link).status_code == 302
    signup = anonymous.post(SIGNUP, {"username": "third", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD})
    assert signup.status_code == 410
    assert not Membership.objects.filter(user=late).exists()
    assert not get_user_model().objects.filter(username="third").exists()
    refusals = AuditEvent.objects.filter(action="invitation.use_refused")
    assert [(e.actor, e.data["reason"]) for e in refusals] == [("user:late", "accepted"), ("anonymous", "accepted")]


def test_it_cannot_be_used_twice_from_one_page(login, tenancy) -> None:
    """Two people on the same page, both clicking: the conditional update lets one through."""
    _, link = _invite(login("admin"), tenancy, "race@example.com")
    first, second = _signed_in(tenancy.users["outsider"]), _signed_in(UserFactory(username="second"))
    _open(first, link), _open(second, link)
    assert first.post(ACCEPT).status_code == 302
    assert second.post(ACCEPT).status_code == 410
    assert Membership.objects.filter(organisation=tenancy.organisation).count() == 5


def test_it_expires_after_seven_days(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "slow@example.com")
    invitation = Invitation.objects.get()
    lifetime = invitation.expires_at - invitation.created_at
    assert abs(lifetime - dt.timedelta(days=7)) < dt.timedelta(seconds=5)
    invitee = _signed_in(tenancy.users["outsider"])
    _open(invitee, link)
    Invitation.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    refused = invitee.post(ACCEPT)  # the page was opened in time, the button pressed too late
    assert refused.status_code == 410 and "This invitation has expired" in _text(refused)
    assert _open(invitee, link).status_code == 410
    assert _open(Client(), link).status_code == 410
    assert not Membership.objects.filter(user=tenancy.users["outsider"], organisation=tenancy.organisation).exists()
    refusals = AuditEvent.objects.filter(action="invitation.use_refused")
    assert [(e.actor, e.data["reason"]) for e in refusals] == [
        ("user:outsider", "expired"), ("user:outsider", "expired"), ("anonymous", "expired")]
    assert all(e.organisation == tenancy.organisation for e in refusals)
    assert "slow@example.com" not in _text(login("admin").get("/members/"))


def test_it_revokes_an_invitation(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "revoked@example.com")
    invitation = Invitation.objects.get()
    assert login("outsider").post(f"/members/invitations/{invitation.pk}/revoke/").status_code == 404
    page = login("admin").post(f"/members/invitations/{invitation.pk}/revoke/", follow=True)
    assert "is revoked: its link no longer works" in _text(page) and not page.context["invitations"]
    refused = _accept(_signed_in(tenancy.users["outsider"]), link)
    assert refused.status_code == 410 and "This invitation was withdrawn" in _text(refused)
    assert not Membership.objects.filter(user=tenancy.users["outsider"], organisation=tenancy.organisation).exists()
    assert _actions() == ["invitation.created", "invitation.revoked", "invitation.use_refused"]
    again = login("admin").post(f"/members/invitations/{invitation.pk}/revoke/", follow=True)
    assert "already accepted or withdrawn" in _text(again)


def test_it_replaces_an_earlier_invitation_of_the_same_address(login, tenancy) -> None:
    _, first = _invite(login("admin"), tenancy, "twice@example.com", role="viewer")
    _, second = _invite(login("admin"), tenancy, "TWICE@example.com", role="member")
    assert _accept(_signed_in(tenancy.users["outsider"]), first).status_code == 410
    assert _accept(_signed_in(tenancy.users["outsider"]), second).status_code == 302
    assert Membership.objects.get(user=tenancy.users["outsider"], organisation=tenancy.organisation).role == "member"
    assert AuditEvent.objects.get(action="invitation.revoked").data["reason"] == "replaced"


# --- roles ----------------------------------------------------------------------------------------------------


def test_it_lets_an_admin_invite_at_most_an_admin(login, tenancy) -> None:
    admin = login("admin")
    form = admin.get("/members/").context["form"]
    assert [value for value, _ in form.fields["role"].choices] == ["admin", "member", "viewer"]
    refused = admin.post("/members/", {"organisation": tenancy.organisation.pk, "email": "boss@example.com",
                                       "role": "owner"})
    assert refused.status_code == 400 and not Invitation.objects.exists()
    with pytest.raises(ValidationError) as excinfo:
        invitation_create(organisation=tenancy.organisation, email="boss@example.com", role="owner",
                          actor="user:admin", actor_role="admin")
    assert "at most: admin" in excinfo.value.message_dict["role"][0]
    _invite(login("owner"), tenancy, "boss@example.com", role="owner")
    _invite(admin, tenancy, "deputy@example.com", role="admin")


def test_it_lets_only_an_owner_revoke_an_invitation_to_be_an_owner(login, tenancy) -> None:
    _invite(login("owner"), tenancy, "boss@example.com", role="owner")
    invitation = Invitation.objects.get()
    page = login("admin").post(f"/members/invitations/{invitation.pk}/revoke/", follow=True)
    assert "cannot withdraw an invitation to be owner" in page.content.decode()
    assert Invitation.objects.get().revoked_at is None
    login("owner").post(f"/members/invitations/{invitation.pk}/revoke/")
    assert Invitation.objects.get().revoked_at is not None


# --- the token ------------------------------------------------------------------------------------------------


def test_it_keeps_only_a_hash_of_the_token_and_never_logs_it(login, tenancy, caplog) -> None:
    caplog.set_level("DEBUG")
    _, link = _invite(login("admin"), tenancy, "secret@example.com")
    token = link.rstrip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get()
    stored = json.dumps(list(Invitation.objects.values().get().values()), default=str)
    assert token not in stored and token[16:] not in stored
    assert invitation.token_hash == hashlib.sha256(token.encode()).hexdigest()
    invitee = _signed_in(tenancy.users["outsider"])
    assert _accept(invitee, link).status_code == 302
    assert _accept(invitee, link).status_code == 410  # a refusal is logged by django.request: without the token
    assert "Gone: /invitation/" in caplog.text
    audit = json.dumps(list(AuditEvent.objects.values("actor", "data", "object_id")), default=str)
    assert token not in audit and token[16:] not in audit
    assert token not in caplog.text
    assert token not in login("admin").get("/members/").content.decode()  # shown once, only


def test_it_opens_nothing_for_a_forged_or_altered_token(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "forged@example.com")
    token = link.rstrip("/").rsplit("/", 1)[1]
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    client = _signed_in(tenancy.users["outsider"])
    for bad in (altered, token[:16], "x" * 59, token + "x"):
        assert client.get(f"/invitations/{bad}/").status_code == 404, bad
        assert client.post(ACCEPT).status_code == 404, bad
    assert not Client().get(f"/invitations/{altered}/").cookies  # no session for a worthless token
    assert not Membership.objects.filter(user=tenancy.users["outsider"], organisation=tenancy.organisation).exists()
    assert not AuditEvent.objects.filter(action="invitation.use_refused").exists()


def test_it_does_not_email_through_the_console_backend(login, tenancy, settings) -> None:
    """The console backend would print the link into the log: the admin passes it on instead."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    response, link = _invite(login("admin"), tenancy, "quiet@example.com")
    assert not response.context["emailed"] and "could not email it" in _text(response)
    assert link in response.content.decode() and not mail.outbox


def test_it_reads_the_members_page_in_a_fixed_number_of_queries(login, tenancy) -> None:
    admin = login("admin")

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin.get("/members/").status_code == 200
        return len(captured.captured_queries)

    invitation_create(organisation=tenancy.organisation, email="a@example.com", role="viewer", actor="t",
                      actor_role="owner")
    few = count()
    for n in range(5):
        invitation_create(organisation=tenancy.sibling, email=f"b{n}@example.com", role="viewer", actor="t",
                          actor_role="owner")
        invitation_create(organisation=tenancy.organisation, email=f"c{n}@example.com", role="viewer", actor="t",
                          actor_role="owner")
    assert count() == few


def test_it_needs_csrf_to_accept_or_sign_up(login, tenancy) -> None:
    _, link = _invite(login("admin"), tenancy, "csrf@example.com")
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenancy.users["outsider"])
    _open(client, link)
    assert client.post(ACCEPT).status_code == 403
    anonymous = Client(enforce_csrf_checks=True)
    _open(anonymous, link)
    assert anonymous.post(SIGNUP, {"username": "csrf", "password": NEW_PASSWORD,
                                   "password_again": NEW_PASSWORD}).status_code == 403
    assert Invitation.objects.get().accepted_at is None


# --- roles and removal of members -----------------------------------------------------------------------------


def test_it_lets_only_an_owner_grant_or_take_the_owner_role(login, tenancy) -> None:
    viewer = _membership(tenancy, "viewer")
    refused = login("admin").post(f"/members/{viewer.pk}/role/", {"role": "owner"}, follow=True)
    assert "Only an owner" in refused.content.decode()
    owner = _membership(tenancy, "owner")
    login("admin").post(f"/members/{owner.pk}/remove/")
    assert Membership.objects.filter(pk=owner.pk).exists()
    assert login("owner").post(f"/members/{viewer.pk}/role/", {"role": "owner"}).status_code == 302
    assert Membership.objects.get(pk=viewer.pk).role == "owner"
    assert login("admin").post(f"/members/{viewer.pk}/role/", {"role": "bogus"}).status_code == 302
    assert Membership.objects.get(pk=viewer.pk).role == "owner"


def test_it_keeps_the_last_owner(login, tenancy) -> None:
    owner = _membership(tenancy, "owner")
    page = login("owner").post(f"/members/{owner.pk}/role/", {"role": "admin"}, follow=True)
    assert "needs at least one owner" in page.content.decode()
    login("owner").post(f"/members/{owner.pk}/remove/")
    assert Membership.objects.get(pk=owner.pk).role == "owner"
    # With a second owner, the first may step down.
    login("owner").post(f"/members/{_membership(tenancy, 'admin').pk}/role/", {"role": "owner"})
    login("owner").post(f"/members/{owner.pk}/role/", {"role": "admin"})
    assert Membership.objects.get(pk=owner.pk).role == "admin"


def test_it_lets_an_admin_remove_a_member(login, tenancy) -> None:
    member = _membership(tenancy, "member")
    assert login("admin").post(f"/members/{member.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert AuditEvent.objects.filter(action="membership.removed").exists()


def test_it_answers_404_for_another_groups_members(login, tenancy) -> None:
    theirs = Membership.objects.get(user=tenancy.users["outsider"])
    for path in (f"/members/{theirs.pk}/role/", f"/members/{theirs.pk}/remove/"):
        assert login("owner").post(path, {"role": "viewer"}).status_code == 404
    assert Membership.objects.get(pk=theirs.pk).role == "owner"


def test_it_needs_csrf_to_change_members(tenancy) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenancy.users["owner"])
    member = _membership(tenancy, "member")
    assert client.post(f"/members/{member.pk}/remove/").status_code == 403
    assert Membership.objects.filter(pk=member.pk).exists()
    assert client.get(f"/members/{member.pk}/remove/").status_code == 200  # the confirmation page: no change
    assert Membership.objects.filter(pk=member.pk).exists()

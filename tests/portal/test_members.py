"""Members in the portal: who may add, re-role and remove people, the owner rules, and that nothing of another
group is reachable."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from governance.models import AuditEvent
from licensing.models import Membership

pytestmark = pytest.mark.django_db


def _membership(tenancy, who: str) -> Membership:
    return Membership.objects.get(user=tenancy.users[who], organisation=tenancy.organisation)


def test_everyone_sees_their_organisations_members_and_only_admins_get_the_forms(login, tenancy) -> None:
    page = login("viewer").get("/members/")
    assert page.status_code == 200
    body = page.content.decode()
    assert all(name in body for name in ("owner", "admin", "member", "viewer")) and "outsider" not in body
    assert "Add a person" not in body and "member-remove" not in body and "/remove/" not in body
    assert "Add a person" in login("admin").get("/members/").content.decode()


@pytest.mark.parametrize("who", ["viewer", "member"])
def test_viewers_and_members_cannot_change_members(login, tenancy, who) -> None:
    client = login(who)
    target = _membership(tenancy, "viewer")
    assert client.post("/members/", {"organisation": tenancy.organisation.pk, "username": "x",
                                     "role": "viewer"}).status_code == 403
    assert client.post(f"/members/{target.pk}/role/", {"role": "admin"}).status_code == 403
    assert client.post(f"/members/{target.pk}/remove/").status_code == 403
    assert Membership.objects.filter(pk=target.pk, role="viewer").exists()


def test_an_admin_adds_a_new_person_who_can_then_log_in(login, tenancy) -> None:
    response = login("admin").post("/members/", {"organisation": tenancy.organisation.pk, "username": "newcomer",
                                                 "email": "new@example.com", "role": "member"})
    assert response.status_code == 200
    password = response.context["secret"]
    assert password and password in response.content.decode()
    user = get_user_model().objects.get(username="newcomer")
    assert user.check_password(password) and user.password != password
    # Through the login page: Client.login() authenticates without a request, which django-axes refuses.
    assert Client().post("/login/", {"username": "newcomer", "password": password}).status_code == 302
    assert Membership.objects.get(user=user).role == "member"
    assert AuditEvent.objects.filter(action="membership.added").count() == 1
    # The same person again: an error next to the field, nothing added.
    again = login("admin").post("/members/", {"organisation": tenancy.organisation.pk, "username": "newcomer",
                                              "role": "viewer"})
    assert again.status_code == 400 and "already a member" in again.content.decode()


def test_only_an_owner_grants_or_takes_the_owner_role(login, tenancy) -> None:
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


def test_the_last_owner_stays(login, tenancy) -> None:
    owner = _membership(tenancy, "owner")
    page = login("owner").post(f"/members/{owner.pk}/role/", {"role": "admin"}, follow=True)
    assert "needs at least one owner" in page.content.decode()
    login("owner").post(f"/members/{owner.pk}/remove/")
    assert Membership.objects.get(pk=owner.pk).role == "owner"
    # With a second owner, the first may step down.
    login("owner").post(f"/members/{_membership(tenancy, 'admin').pk}/role/", {"role": "owner"})
    login("owner").post(f"/members/{owner.pk}/role/", {"role": "admin"})
    assert Membership.objects.get(pk=owner.pk).role == "admin"


def test_an_admin_removes_a_member(login, tenancy) -> None:
    member = _membership(tenancy, "member")
    assert login("admin").post(f"/members/{member.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert AuditEvent.objects.filter(action="membership.removed").exists()


def test_another_groups_members_are_404(login, tenancy) -> None:
    theirs = Membership.objects.get(user=tenancy.users["outsider"])
    for path in (f"/members/{theirs.pk}/role/", f"/members/{theirs.pk}/remove/"):
        assert login("owner").post(path, {"role": "viewer"}).status_code == 404
    assert Membership.objects.get(pk=theirs.pk).role == "owner"


def test_member_changes_need_csrf(tenancy) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenancy.users["owner"])
    member = _membership(tenancy, "member")
    assert client.post(f"/members/{member.pk}/remove/").status_code == 403
    assert Membership.objects.filter(pk=member.pk).exists()
    assert client.get(f"/members/{member.pk}/remove/").status_code == 405

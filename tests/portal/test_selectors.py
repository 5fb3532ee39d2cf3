"""The portal's own reads: keys of the caller's organisations, and the audit log's filters."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from access import selectors
from access.audit import audit_record
from access.keys import api_key_create
from access.models import AuditEvent, Organisation
from tests.portal.conftest import Tenancy

pytestmark = pytest.mark.django_db


def test_it_lists_and_finds_only_the_callers_keys(tenancy: Tenancy) -> None:
    ours, _ = api_key_create(organisation=tenancy.organisation, name="ours", scopes=["read"], created_by="t")
    theirs, _ = api_key_create(organisation=tenancy.outsider_org, name="theirs", scopes=["read"], created_by="t")
    mine = Organisation.objects.filter(pk=tenancy.organisation.pk)
    assert list(selectors.api_key_list(organisation_ids=[tenancy.organisation.pk])) == [ours]
    assert selectors.api_key_get(organisations=mine, pk=ours.pk) == ours
    assert selectors.api_key_get(organisations=mine, pk=theirs.pk) is None


def test_it_narrows_the_audit_entries_given_by_every_filter_newest_first(tenancy: Tenancy) -> None:
    group, other = tenancy.organisation.group, tenancy.outsider_org.group
    start = AuditEvent.objects.count()
    audit_record(action="product.created", actor="user:owner", group=group)
    audit_record(action="product.updated", actor="user:Admin", group=group)
    audit_record(action="key.created", actor="user:admin", group=group)
    audit_record(action="product.created", actor="user:admin", group=other)
    events = AuditEvent.objects.filter(group=group)  # what the caller sees
    assert [e.action for e in selectors.audit_event_search(events=events)] == [
        "key.created", "product.updated", "product.created"]
    assert [e.action for e in selectors.audit_event_search(events=events, action="product.", actor="ADMIN")] == [
        "product.updated"]
    assert list(selectors.audit_event_search(events=events, group=other)) == []
    today = timezone.now().date()
    assert len(selectors.audit_event_search(events=events, since=today, until=today)) == 3
    assert list(selectors.audit_event_search(events=events, until=today - dt.timedelta(days=1))) == []
    assert selectors.audit_events_unscoped().count() == start + 4

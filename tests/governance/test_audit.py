"""The hash-chained audit log: every edit or removal of an entry is found by audit_verify."""

from __future__ import annotations

import datetime as dt

import pytest

from access.audit import GENESIS_HASH, _entry_hash, _hashed_fields, audit_record, audit_verify
from access.models import AuditEvent
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


def record_five() -> list[AuditEvent]:
    organisation = OrganisationFactory()
    return [
        audit_record(action="test.event", actor=f"actor-{n}", organisation=organisation, data={"n": n})
        for n in range(1, 6)
    ]


def test_it_verifies_an_empty_chain() -> None:
    result = audit_verify()

    assert (result.ok, result.checked, result.first_bad_seq, result.reason) == (True, 0, None, "intact")


def test_it_verifies_an_intact_chain() -> None:
    record_five()

    result = audit_verify()

    assert (result.ok, result.checked, result.first_bad_seq, result.reason) == (True, 5, None, "intact")


def test_it_links_each_entry_to_the_one_before() -> None:
    events = record_five()

    assert [event.seq for event in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS_HASH
    assert [event.prev_hash for event in events[1:]] == [event.hash for event in events[:-1]]
    assert len({event.hash for event in events}) == 5


def test_it_records_the_organisations_group_and_plain_json_data() -> None:
    organisation = OrganisationFactory()

    event = audit_record(
        action="test.event", actor="alice", organisation=organisation, obj=organisation,
        data={"on": dt.date(2024, 7, 23)},
    )

    event.refresh_from_db()
    assert event.group == organisation.group
    assert (event.object_type, event.object_id) == ("Organisation", str(organisation.pk))
    assert event.data == {"on": "2024-07-23"}
    assert audit_verify().ok


def test_it_finds_an_entry_whose_data_was_edited() -> None:
    record_five()
    AuditEvent.objects.filter(seq=3).update(data={"n": 300})

    result = audit_verify()

    assert (result.ok, result.first_bad_seq, result.reason) == (False, 3, "content does not match its hash")
    assert result.checked == 2


def test_it_finds_an_entry_whose_actor_was_edited() -> None:
    record_five()
    AuditEvent.objects.filter(seq=4).update(actor="mallory")

    result = audit_verify()

    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_it_finds_an_edit_even_when_the_entrys_own_hash_is_rewritten_to_match() -> None:
    events = record_five()
    forged = AuditEvent.objects.get(seq=2)
    forged.data = {"n": 200}  # a forger who knows the algorithm rewrites the entry's own hash too
    AuditEvent.objects.filter(seq=2).update(data=forged.data, hash=_entry_hash(events[0].hash, _hashed_fields(forged)))

    result = audit_verify()

    assert (result.ok, result.first_bad_seq, result.reason) == (False, 3, "link to the previous entry is broken")


def test_it_finds_an_entry_that_was_deleted() -> None:
    record_five()
    AuditEvent.objects.filter(seq=2).delete()

    result = audit_verify()

    assert (result.ok, result.first_bad_seq, result.reason) == (False, 2, "entry #2 is missing")
    assert result.checked == 1


def test_it_refuses_to_save_an_existing_entry_again() -> None:
    event = record_five()[0]
    stored = AuditEvent.objects.get(pk=event.pk)
    stored.actor = "mallory"

    with pytest.raises(ValueError, match="append-only"):
        stored.save()

    assert AuditEvent.objects.get(pk=event.pk).actor == "actor-1"
    assert audit_verify().ok


def test_it_refuses_to_delete_an_entry() -> None:
    event = record_five()[0]

    with pytest.raises(ValueError, match="append-only"):
        event.delete()

    assert AuditEvent.objects.count() == 5


def test_it_finds_two_entries_swapped_in_order() -> None:
    events = record_five()
    second, third = events[1], events[2]
    # Swap their places in the sequence (through a free number, as the column is unique).
    AuditEvent.objects.filter(pk=second.pk).update(seq=1000)
    AuditEvent.objects.filter(pk=third.pk).update(seq=2)
    AuditEvent.objects.filter(pk=second.pk).update(seq=3)

    result = audit_verify()

    assert (result.ok, result.first_bad_seq, result.reason) == (False, 2, "link to the previous entry is broken")


def test_the_command_reports_a_reordered_chain() -> None:
    from django.core.management import CommandError, call_command

    events = record_five()
    AuditEvent.objects.filter(pk=events[3].pk).update(seq=1000)
    AuditEvent.objects.filter(pk=events[4].pk).update(seq=4)
    AuditEvent.objects.filter(pk=events[3].pk).update(seq=5)
    with pytest.raises(CommandError, match="#4"):
        call_command("audit_verify")

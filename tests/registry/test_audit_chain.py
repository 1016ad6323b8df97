"""The audit log is tamper-evident: events are chained by hashes once sealed, and verify_audit finds an
edited event, a deleted one, and an edit whose hash was recomputed to hide it."""

from __future__ import annotations

import io
import threading

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from registry.audit import GENESIS, audit_seal, audit_verify, event_hash
from registry.events import event_record, events_bulk
from registry.models import Event
from tests.factories import RegisteredModelFactory


def write_events(n: int, model=None) -> None:
    model = model or RegisteredModelFactory()
    for i in range(n):
        event_record(
            kind="model.updated", actor="tests", model=model, data={"i": i, "note": "ünïcode", "x": 0.1}
        )


def verify() -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit", stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue() + str(exc)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_sealed_events_form_a_chain_that_verifies():
    write_events(5)
    assert audit_seal() == 5 and audit_seal() == 0  # idempotent
    rows = list(Event.objects.order_by("seq").values())
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == GENESIS
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 5))
    # Later events continue the chain, those written in bulk (COPY on PostgreSQL) too.
    write_events(2)
    first = rows[0]
    events_bulk(
        [
            dict(
                kind="model.updated",
                actor="sweep",
                model_id=first["model_id"],
                version_id=None,
                data={"b": 1},
                at=first["at"],
            )
        ]
    )
    assert audit_seal() == 3
    out, err = verify()
    assert "checked 8 event(s)" in out and "the audit log is intact" in out and not err
    assert audit_verify().head_hash == Event.objects.get(seq=8).hash


@pytest.mark.django_db
def test_an_edited_event_is_found_and_named():
    write_events(4)
    audit_seal()
    target = Event.objects.get(seq=3)
    Event.objects.filter(pk=target.pk).update(data={**target.data, "i": 99})
    _, err = verify()
    assert f"event {target.pk} (seq 3" in err and "it was edited" in err
    assert "tampered with: 1 problem(s)" in err
    # The actor and the time are covered too.
    Event.objects.filter(pk=target.pk).update(data=target.data, actor="someone-else")
    assert "it was edited" in verify()[1]


@pytest.mark.django_db
def test_a_deleted_event_and_a_recomputed_hash_are_found():
    write_events(6)
    audit_seal()
    Event.objects.filter(seq=2).delete()
    assert "seq 2..2 missing" in verify()[1]

    # An edit whose own hash is recomputed breaks the next event's link instead.
    edited = Event.objects.filter(seq=4).values().get()
    edited["data"] = {"i": -1}
    forged = event_hash(edited["prev_hash"], edited)
    Event.objects.filter(pk=edited["id"]).update(data=edited["data"], hash=forged)
    problems = audit_verify().problems
    assert any("seq 5" in p and "prev_hash does not match" in p for p in problems), problems


@pytest.mark.django_db(transaction=True)
def test_two_sealers_at_once_seal_every_event_exactly_once():
    write_events(300)
    counts: list[int] = []

    def seal() -> None:
        counts.append(audit_seal(batch=50))
        connection.close()

    threads = [threading.Thread(target=seal) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit_seal()  # whoever lost the lock returned early; a later run finds the rest, if any
    assert sorted(Event.objects.values_list("seq", flat=True)) == list(range(1, 301))
    assert audit_verify().intact


def test_beat_seals_the_log_every_minute():
    entry = settings.CELERY_BEAT_SCHEDULE["audit-seal"]
    assert entry["task"] == "workers.maintenance.audit_seal" and entry["schedule"] == 60.0

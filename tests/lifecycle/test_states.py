"""The state machine: the one writer of status, its table of moves, and the database's guarantees."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from lifecycle.states import TRANSITIONS, TransitionNotAllowed, version_transition
from registry.models import Event, ModelVersion, VersionStatus
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


def test_every_status_has_a_row_in_the_table():
    assert set(TRANSITIONS) == set(VersionStatus.values)


def test_a_move_writes_the_status_and_an_audit_event_together():
    version = ModelVersionFactory()

    moved = version_transition(version_id=version.pk, to="validating", actor="system:gates", reason="claimed")

    assert moved.status == "validating"
    event = Event.objects.get(version=version)
    assert (event.kind, event.actor) == ("version.transitioned", "system:gates")
    assert event.data == {"from": "registered", "to": "validating", "reason": "claimed"}


def test_a_move_outside_the_table_is_refused_and_leaves_no_trace():
    version = ModelVersionFactory()

    with pytest.raises(TransitionNotAllowed, match="cannot move from registered to production"):
        version_transition(version_id=version.pk, to="production", actor="tests")

    assert ModelVersion.objects.get(pk=version.pk).status == "registered"
    assert not Event.objects.exists()


def test_an_expected_status_guards_against_a_concurrent_move():
    version = ModelVersionFactory()
    version_transition(version_id=version.pk, to="validating", actor="worker-1", expected="registered")

    with pytest.raises(TransitionNotAllowed, match="is validating, not registered"):
        version_transition(version_id=version.pk, to="validating", actor="worker-2", expected="registered")


def test_the_event_rolls_back_with_the_move():
    version = ModelVersionFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        version_transition(version_id=version.pk, to="validating", actor="tests")
        raise RuntimeError("the caller failed after the move")

    assert ModelVersion.objects.get(pk=version.pk).status == "registered"
    assert not Event.objects.exists()


def test_the_database_allows_one_production_version_per_model():
    model = RegisteredModelFactory()
    first, second = ModelVersionFactory(model=model, version=1), ModelVersionFactory(model=model, version=2)
    ModelVersion.objects.filter(pk=first.pk).update(status="production")

    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=second.pk).update(status="production")

    other = ModelVersionFactory(model=RegisteredModelFactory(), version=1)
    ModelVersion.objects.filter(pk=other.pk).update(status="production")  # another model: fine

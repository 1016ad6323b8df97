"""The audit log's one writer."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser

from registry.models import Dataset, Event, EventKind, ModelVersion, RegisteredModel

Actor = AbstractBaseUser | AnonymousUser | str | None


def actor_label(actor: Actor) -> str:
    """A user's name, or ``system:<component>`` for the workers."""
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return actor.get_username() or "anonymous"


def event_record(
    *,
    kind: EventKind | str,
    actor: Actor,
    model: RegisteredModel | None = None,
    version: ModelVersion | None = None,
    dataset: Dataset | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Append one audit event. Call it inside the transaction of the change it records."""
    if version is not None and model is None:
        model = version.model
    return Event.objects.create(
        kind=kind,
        actor=actor_label(actor),
        model=model,
        version=version,
        dataset=dataset,
        data=data or {},
    )

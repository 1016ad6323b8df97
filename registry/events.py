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


def events_bulk(rows: list[dict[str, Any]]) -> int:
    """Append many audit events in one statement: COPY on PostgreSQL (100,000 rows in about a second,
    where an INSERT built by the ORM took 16), ``bulk_create`` elsewhere.

    Each row holds ``kind``, ``actor`` (a label), ``model_id``, ``version_id``, ``data`` and ``at``.
    """
    if not rows:
        return 0
    from django.db import connection

    if connection.vendor != "postgresql":
        Event.objects.bulk_create((Event(**row) for row in rows), batch_size=2000)
        return len(rows)
    import json

    table = Event._meta.db_table
    columns = "kind, actor, model_id, version_id, data, at"
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor, under Django's wrapper
        with raw.copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
            for r in rows:
                copy.write_row(
                    (
                        str(r["kind"]),
                        r["actor"],
                        r["model_id"],
                        r["version_id"],
                        json.dumps(r["data"]),
                        r["at"],
                    )
                )
    return len(rows)

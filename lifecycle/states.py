"""The version state machine: the one place that writes ``ModelVersion.status``.

Every move is checked against ``TRANSITIONS``, made under the row's lock, and recorded as an audit
Event in the same transaction.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from lifecycle import webhooks
from registry.events import Actor, actor_label, event_record, events_bulk
from registry.models import EventKind, ModelVersion
from registry.models import VersionStatus as S

TRANSITIONS: dict[str, frozenset[str]] = {
    S.REGISTERED: frozenset({S.VALIDATING, S.REJECTED}),
    S.VALIDATING: frozenset({S.SHADOWING, S.AWAITING_APPROVAL, S.REJECTED}),
    S.SHADOWING: frozenset({S.AWAITING_APPROVAL, S.REJECTED, S.RETIRED}),
    S.AWAITING_APPROVAL: frozenset({S.PRODUCTION, S.REJECTED, S.VALIDATING}),  # revalidate
    S.PRODUCTION: frozenset({S.ARCHIVED, S.RETIRED}),
    # Restore and rollback go back through the approval path, never straight to production.
    S.ARCHIVED: frozenset({S.AWAITING_APPROVAL, S.RETIRED}),
    S.REJECTED: frozenset({S.VALIDATING, S.RETIRED}),  # revalidate
    S.RETIRED: frozenset({S.ARCHIVED}),  # restore
}

TERMINAL = frozenset({S.REJECTED, S.RETIRED})
# States in which a worker still owes the version some work; the reconciler watches these.
PIPELINE_STATES = frozenset({S.REGISTERED, S.VALIDATING})


class TransitionNotAllowed(Exception):
    def __init__(self, version: ModelVersion, to: str, why: str = "") -> None:
        self.version, self.to = version, to
        super().__init__(why or f"{version.label} cannot move from {version.status} to {to}")


@transaction.atomic
def version_transition(
    *,
    version_id: int,
    to: str,
    actor: Actor,
    reason: str = "",
    expected: str | frozenset[str] | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> ModelVersion:
    """Move a version to ``to``; ``expected`` guards against a concurrent move (compare-and-set).

    Extra keyword ``fields`` are written with the status (e.g. clearing the pipeline lease).
    """
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
    old = version.status
    if expected is not None:
        allowed_from = {expected} if isinstance(expected, str) else set(expected)
        if old not in allowed_from:
            raise TransitionNotAllowed(
                version, to, f"{version.label} is {old}, not {' or '.join(sorted(allowed_from))}"
            )
    if to not in TRANSITIONS.get(old, frozenset()):
        raise TransitionNotAllowed(version, to)
    now = timezone.now()
    version.status, version.status_reason, version.status_changed_at = to, reason, now
    for name, value in fields.items():
        setattr(version, name, value)
    version.save(update_fields=["status", "status_reason", "status_changed_at", *fields])
    event_record(
        kind=EventKind.VERSION_TRANSITIONED,
        actor=actor,
        version=version,
        data={"from": old, "to": to, "reason": reason, **(data or {})},
    )
    if to in webhooks.STATUS_EVENTS:
        webhooks.webhooks_emit(
            event=webhooks.STATUS_EVENTS[to], version=version, data={"from": old, "reason": reason}
        )
    return version


def versions_transition_bulk(
    *,
    versions: list[tuple[int, int, str]],
    to: str,
    actor: Actor,
    reason: str,
    data_of: dict[int, dict] | None = None,
    also: dict[str, Any] | None = None,
) -> set[int]:
    """Move many versions, given as ``(id, model_id, status)``, to ``to`` in a constant number of queries
    (the retirement sweep's path).

    Each version moves only if it still has the status it was read with, and only along
    ``TRANSITIONS``; each move gets its audit event and webhook. Returns the ids that moved.
    """
    movable = [v for v in versions if to in TRANSITIONS.get(v[2], frozenset())]
    if not movable:
        return set()
    now = timezone.now()
    label = actor_label(actor)
    with transaction.atomic():
        locked = set(
            ModelVersion.objects.select_for_update()
            .filter(pk__any=[pk for pk, _, _ in movable], status__in={status for _, _, status in movable})
            .values_list("id", "status")
        )
        moved = [v for v in movable if (v[0], v[2]) in locked]
        ModelVersion.objects.filter(pk__any=[pk for pk, _, _ in moved]).update(
            status=to, status_changed_at=now, status_reason=reason, **(also or {})
        )
        events_bulk(
            [
                {
                    "kind": EventKind.VERSION_TRANSITIONED,
                    "actor": label,
                    "model_id": model_id,
                    "version_id": pk,
                    "data": {"from": status, "to": to, "reason": reason, **(data_of or {}).get(pk, {})},
                    "at": now,
                }
                for pk, model_id, status in moved
            ]
        )
        if to in webhooks.STATUS_EVENTS:
            webhooks.webhooks_emit_many(
                [
                    (webhooks.STATUS_EVENTS[to], pk, model_id, {"from": status, "reason": reason})
                    for pk, model_id, status in moved
                ]
            )
    return {pk for pk, _, _ in moved}

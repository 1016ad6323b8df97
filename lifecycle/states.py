"""The version state machine: the one place that writes ``ModelVersion.status``.

Every move is checked against ``TRANSITIONS``, made under the row's lock, and recorded as an audit
Event in the same transaction.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from lifecycle import webhooks
from registry.events import Actor, event_record
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

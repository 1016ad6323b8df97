"""The pipeline: push → validating → (rejected | shadowing | awaiting_approval), and its reconciler.

Shadowing itself lives in ``lifecycle.shadow``; this module hands a version over to it.

Work is handed to Celery by task name once the transaction that created it commits. Every step
claims its version with a compare-and-set lease, so a duplicate delivery does nothing, and a worker
that died leaves a lease that expires and is handed out again by ``pipeline_reconcile``. A step that
keeps dying (a model that crashes or exhausts its worker) is stopped after a few attempts.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from lifecycle import gates
from lifecycle.leases import lease_claim
from lifecycle.policy import policy_parse
from lifecycle.states import PIPELINE_STATES, TransitionNotAllowed, version_transition
from registry.events import event_record
from registry.models import DatasetRole, EventKind, GateResult, ModelVersion, VersionDataset
from registry.models import VersionStatus as S
from registry.selectors import model_champion
from registry.services import Upload, model_version_register

log = logging.getLogger(__name__)

GATES_ACTOR = "system:gates"
RUN_GATES = "workers.tasks.run_gates"
WARM_DATASETS = "workers.tasks.warm_datasets"
START_EXPORTS = "workers.exports.start_exports"


def _send(task_name: str, *args: Any) -> None:
    from config.celery import app

    try:
        app.send_task(task_name, args=list(args))
    except Exception:
        # The broker is away. The state is committed, so nothing is lost: the reconciler enqueues it
        # again once the broker is back. A push must not fail because of it.
        log.warning("could not enqueue %s%s; the reconciler will retry", task_name, args, exc_info=True)


def enqueue_on_commit(task_name: str, *args: Any) -> None:
    """Send a task by name once the current transaction commits (right away outside one).

    By name, so that ``lifecycle`` does not import ``workers`` (the dependency points the other way).
    """
    transaction.on_commit(partial(_send, task_name, *args), robust=True)


def version_push(*, model, upload: Upload, metadata: dict, actor, idempotency_key: str | None = None):
    """Register a pushed version and start its pipeline.

    Not one transaction: registration checks the artifact and stores its bytes before it takes the
    model's lock, and those slow steps must not hold a transaction (SQLite's write lock) open.
    """
    version, created = model_version_register(
        model=model, upload=upload, metadata=metadata, actor=actor, idempotency_key=idempotency_key
    )
    if created:
        _send(RUN_GATES, version.pk)
        from lifecycle import webhooks

        with transaction.atomic():
            webhooks.webhooks_emit(
                event="version.registered",
                version=version,
                data={"by": version.created_by.get_username() if version.created_by else None},
            )
    return version, created


# --- validation ---------------------------------------------------------------------------------


def validation_claim(version_id: int, *, now: dt.datetime | None = None) -> ModelVersion | None:
    """Claim the version's validation step; None when another worker holds it or nothing is left."""
    now = now or timezone.now()
    with transaction.atomic():
        rows = ModelVersion.objects.filter(pk=version_id, status__in=PIPELINE_STATES)
        if not lease_claim(rows, attempts_field="task_attempts", now=now):
            return None
        version = ModelVersion.objects.select_related("model").get(pk=version_id)
        if version.task_attempts > settings.MODELGATE_MAX_TASK_ATTEMPTS:
            version_transition(
                version_id=version.pk,
                to=S.REJECTED,
                actor=GATES_ACTOR,
                reason=(
                    f"validation did not finish after {version.task_attempts - 1} attempts: the worker died "
                    "each time (the model may exhaust memory or crash its runtime)"
                ),
                lease_expires_at=None,
            )
            return None
        if version.status == S.REGISTERED:
            version = version_transition(
                version_id=version.pk, to=S.VALIDATING, actor=GATES_ACTOR, expected=S.REGISTERED
            )
        elif version.task_attempts > 1:
            event_record(
                kind=EventKind.TASK_RECLAIMED,
                actor=GATES_ACTOR,
                version=version,
                data={"step": "validation", "attempt": version.task_attempts},
            )
    return version


def _shadow_skipped(version: ModelVersion, champion: ModelVersion | None) -> str:
    """Why the shadow stage is skipped; an empty string when the version shadows its champion."""
    if champion is None or champion.pk == version.pk:
        return "no champion: the first version of a model has nothing to shadow"
    if not policy_parse(version.model.policy).shadow.enabled:
        return "shadowing is turned off by the policy (shadow.enabled: false)"
    return ""


@transaction.atomic
def validation_finish(*, version_id: int, attempt: int, evaluation: gates.Evaluation) -> ModelVersion | None:
    """Write one attempt's gate results and move the version on, all in one transaction.

    Returns None when the work was already done (a duplicate delivery finished first).
    """
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
    if version.status != S.VALIDATING or version.gate_attempt != attempt:
        return None
    if GateResult.objects.filter(version=version, attempt=attempt).exists():
        return None
    GateResult.objects.bulk_create(
        [
            GateResult(
                version=version,
                attempt=attempt,
                gate_index=o.gate_index,
                gate=o.gate,
                metric=o.metric,
                slice=o.slice,
                value=o.value,
                baseline=o.baseline,
                threshold=o.threshold,
                passed=o.passed,
                skipped_reason=o.skipped_reason,
                rows=o.rows,
                duration_ms=o.duration_ms,
                details=o.details,
            )
            for o in evaluation.outcomes
        ]
    )
    if evaluation.signature is not None:
        ModelVersion.objects.filter(pk=version.pk).update(signature=evaluation.signature)
    for dataset_id in evaluation.datasets:  # lineage: the data the registry scored it on
        VersionDataset.objects.get_or_create(
            version=version, dataset_id=dataset_id, role=DatasetRole.VALIDATION
        )
    failed = evaluation.failed
    event_record(
        kind=EventKind.GATES_COMPLETED,
        actor=GATES_ACTOR,
        version=version,
        data={
            "attempt": attempt,
            "passed": not failed,
            "runtime": evaluation.runtime,
            "results": len(evaluation.outcomes),
            "failed": [o.gate for o in failed],
        },
    )
    if failed:
        return version_transition(
            version_id=version.pk,
            to=S.REJECTED,
            actor=GATES_ACTOR,
            reason=gates.rejection_reason(failed),
            lease_expires_at=None,
            task_attempts=0,
        )
    from lifecycle import approval  # approval builds on the pipeline's enqueueing

    if policy_parse(version.model.policy).exports.formats:
        # Export branches run beside the next stages; they do not hold them up.
        enqueue_on_commit(START_EXPORTS, version.pk)
    champion = model_champion(version.model)
    skipped = _shadow_skipped(version, champion)
    if not skipped:
        from lifecycle import shadow

        shadow.shadow_start(version=version, champion=champion, actor=GATES_ACTOR)
        return ModelVersion.objects.select_related("model").get(pk=version.pk)
    event_record(
        kind=EventKind.STAGE_SKIPPED,
        actor=GATES_ACTOR,
        version=version,
        data={"stage": "shadow", "reason": skipped},
    )
    return approval.await_approval(version_id=version.pk, actor=GATES_ACTOR, reason=skipped)


def policy_written(model) -> None:
    """A model's policy was created or changed: have a gates worker decode the datasets it scores
    on now, so that the next push reads them decoded instead of parsing them while CI waits."""
    if any(gate.kind in gates.DATASET_GATES for gate in policy_parse(model.policy).gates):
        enqueue_on_commit(WARM_DATASETS, model.pk)


def datasets_warm(model_id: int) -> int:
    """The gates worker's side of ``policy_written``: decode the model's datasets into this host's cache."""
    from registry.models import RegisteredModel

    model = RegisteredModel.objects.filter(pk=model_id).first()
    return gates.datasets_warm(policy_parse(model.policy)) if model is not None else 0


def validation_run(version_id: int) -> ModelVersion | None:
    """The whole validation step of one version: claim, evaluate, finish. Safe to run twice."""
    version = validation_claim(version_id)
    if version is None:
        log.info("version %s: nothing to validate (already claimed or done)", version_id)
        return None
    try:
        evaluation = gates.gates_evaluate(version)
    except Exception:
        # Not the model's fault as far as we know (the database or the store went away, or a bug):
        # hand the step back soon rather than at the end of the lease. The attempt counter still
        # stops a step that fails every time.
        retry_at = timezone.now() + dt.timedelta(seconds=settings.MODELGATE_RETRY_DELAY_SECONDS)
        ModelVersion.objects.filter(pk=version.pk, status=S.VALIDATING).update(lease_expires_at=retry_at)
        raise
    try:
        return validation_finish(version_id=version.pk, attempt=version.gate_attempt, evaluation=evaluation)
    except TransitionNotAllowed:
        log.info("version %s moved on while its gates ran; results dropped", version_id)
        return None


@transaction.atomic
def version_revalidate(*, version: ModelVersion, actor, reason: str = "") -> ModelVersion:
    """Run the gates again as a new attempt; earlier attempts' results are kept."""
    locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if locked.status not in REVALIDATE_FROM:
        raise TransitionNotAllowed(
            locked,
            S.VALIDATING,
            f"{locked.label} is {locked.status}; only {', '.join(sorted(REVALIDATE_FROM))} "
            "versions can be revalidated",
        )
    attempt = locked.gate_attempt + 1
    moved = version_transition(
        version_id=locked.pk,
        to=S.VALIDATING,
        actor=actor,
        reason=reason or f"revalidation requested (attempt {attempt})",
        data={"attempt": attempt},
        gate_attempt=attempt,
        task_attempts=0,
        lease_expires_at=None,
    )
    enqueue_on_commit(RUN_GATES, moved.pk)
    return moved


REVALIDATE_FROM = frozenset({S.REJECTED, S.AWAITING_APPROVAL})


# --- reconciler ---------------------------------------------------------------------------------


def pipeline_stuck(now: dt.datetime | None = None) -> list[int]:
    """Versions whose pipeline step was lost: an expired lease, or never picked up after the grace time."""
    now = now or timezone.now()
    grace = now - dt.timedelta(seconds=settings.MODELGATE_RECONCILE_GRACE_SECONDS)
    return list(
        ModelVersion.objects.filter(status__in=PIPELINE_STATES)
        .filter(Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True))
        # Not re-sent within the grace time, so that a backed-up queue is not flooded with copies.
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=grace))
        .filter(status_changed_at__lt=grace)
        .order_by("id")
        .values_list("id", flat=True)[:1000]
    )


def pipeline_reconcile(now: dt.datetime | None = None) -> list[int]:
    """Re-enqueue every stuck version; the step's own claim makes a needless re-enqueue harmless."""
    stuck = pipeline_stuck(now)
    ModelVersion.objects.filter(pk__in=stuck).update(enqueued_at=now or timezone.now())
    for version_id in stuck:
        _send(RUN_GATES, version_id)
    if stuck:
        log.info("reconciler re-enqueued %d version(s): %s", len(stuck), stuck[:20])
    return stuck

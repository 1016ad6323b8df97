"""Celery tasks: thin, idempotent wrappers that take ids and call ``lifecycle`` functions."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from lifecycle import pipeline
from workers.limits import model_limits

# Both gates-queue tasks parse uploaded datasets: the same time limits.
GATE_TIME_LIMITS = {
    "time_limit": settings.MODELGATE_GATE_TIME_LIMIT,
    "soft_time_limit": max(settings.MODELGATE_GATE_TIME_LIMIT - 30, 30),
}


@shared_task(name="workers.tasks.run_gates", acks_late=True, reject_on_worker_lost=True, **GATE_TIME_LIMITS)
def run_gates(version_id: int) -> None:
    with model_limits():
        pipeline.validation_run(version_id)


@shared_task(
    # Only a head start: a warm-up lost with its worker (a dataset that does not fit the memory
    # limit, say) is not redelivered; the first evaluation decodes instead, under its own limits.
    name="workers.tasks.warm_datasets",
    acks_late=False,
    **GATE_TIME_LIMITS,
)
def warm_datasets(model_id: int) -> None:
    with model_limits():
        pipeline.datasets_warm(model_id)


@shared_task(name="workers.tasks.reconcile_pipeline", ignore_result=True)
def reconcile_pipeline() -> None:
    pipeline.pipeline_reconcile()

"""Celery tasks of the export branches: thin wrappers that take ids and call ``lifecycle.exports``.

All of them are routed to the ``exports`` queue (config/celery.py). ``run_export`` claims its row with
a lease, so a duplicate or redelivered message does nothing; ``reconcile_exports`` (beat) sends lost
ones again.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from lifecycle import exports
from workers.limits import model_limits


@shared_task(name="workers.exports.start_exports", acks_late=True, reject_on_worker_lost=True)
def start_exports(version_id: int) -> None:
    exports.exports_start(version_id)


@shared_task(
    name="workers.exports.run_export",
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=settings.MODELGATE_GATE_TIME_LIMIT,
    soft_time_limit=max(settings.MODELGATE_GATE_TIME_LIMIT - 30, 30),
)
def run_export(export_id: int) -> None:
    with model_limits():
        exports.export_run(export_id)


@shared_task(name="workers.exports.exports_finished", acks_late=True, reject_on_worker_lost=True)
def exports_finished(version_id: int) -> None:
    """Record the completion of a version's exports (idempotent; the last run_export already does)."""
    exports.exports_complete(version_id)


@shared_task(name="workers.exports.reconcile_exports", ignore_result=True)
def reconcile_exports() -> None:
    """Re-enqueue export work whose task was lost."""
    exports.exports_reconcile()

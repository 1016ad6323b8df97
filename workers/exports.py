"""Celery tasks of the export branches (filled in by the exports step)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="workers.exports.reconcile_exports", ignore_result=True)
def reconcile_exports() -> None:
    """Re-enqueue export work whose task was lost."""

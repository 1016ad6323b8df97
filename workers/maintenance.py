"""Maintenance tasks: the retirement sweep and the retention purge (one idempotent sweep does both)."""

from __future__ import annotations

from celery import shared_task

from lifecycle import retirement


@shared_task(name="workers.maintenance.retirement_sweep", acks_late=True, ignore_result=True)
def retirement_sweep() -> None:
    retirement.retirement_sweep()

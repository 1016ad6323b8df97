"""Maintenance tasks: the retirement sweep and the retention purge (one idempotent sweep does both)."""

from __future__ import annotations

from celery import shared_task

from lifecycle import retirement


@shared_task(name="workers.maintenance.retirement_sweep", acks_late=True, ignore_result=True)
def retirement_sweep() -> None:
    retirement.retirement_sweep()


@shared_task(name="workers.maintenance.audit_seal", acks_late=True, ignore_result=True)
def audit_seal() -> None:
    from registry.audit import audit_seal as seal

    seal()


@shared_task(name="workers.maintenance.direct_uploads_expire", acks_late=True, ignore_result=True)
def direct_uploads_expire() -> None:
    from registry.direct_uploads import direct_uploads_expire as expire

    expire()


@shared_task(name="workers.maintenance.orphans_sweep", acks_late=True, ignore_result=True)
def orphans_sweep() -> None:
    from lifecycle.orphans import orphans_sweep as sweep

    sweep()

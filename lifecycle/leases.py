"""The compare-and-set lease every pipeline step claims its row with.

A worker claims a row by moving its lease forward, in one UPDATE that succeeds only when no live
lease is held; so of two deliveries of the same task only one works, and a worker that died leaves
a lease that expires and lets the reconciler hand the work out again. The attempt counter lives in
the same row, so a step that kills its worker every time is stopped rather than requeued forever.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db.models import F, Q, QuerySet


def lease_claim(
    rows: QuerySet, *, attempts_field: str, now: dt.datetime, seconds: float | None = None, **also: Any
) -> bool:
    """Claim the single row of ``rows`` if its lease is free or expired; count the attempt."""
    lease = now + dt.timedelta(seconds=seconds or settings.MODELGATE_TASK_LEASE_SECONDS)
    claimed = rows.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)).update(
        lease_expires_at=lease, **{attempts_field: F(attempts_field) + 1}, **also
    )
    return claimed == 1

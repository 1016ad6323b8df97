"""Orphan blobs: bytes in the store that no record refers to, collected after a grace period.

A push stores its artifact before it commits the version that points at it: the bytes must be there
before any row names them. So a crash, a lost database or a refused commit between the two leaves a
blob nobody refers to (a push retried after it finds the same bytes already stored and refers to them
again). A killed writer on the disk store leaves a ``.part`` file the same way. Neither is visible to
anyone; they only take space.

The sweep lists the store's content-addressed areas and deletes what no version, export or dataset
names and what changed longer ago than ``MODELGATE_ORPHAN_GRACE_HOURS``. The grace covers a push between
its store write and its commit, however slow. It reads the referenced keys in three queries, whatever
the number of records, and streams the store listing.

Direct uploads stage their bytes under ``uploads/``, which has its own expiry
(``registry.direct_uploads``); the sweep leaves that area alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from registry.events import event_record
from registry.models import Dataset, EventKind, Export, ModelVersion
from registry.storage import blob_delete, blob_list

log = logging.getLogger(__name__)

ACTOR = "system:orphans"
AREAS = ("artifacts/", "exports/", "datasets/")


@dataclass
class Sweep:
    scanned: int = 0
    orphans: list[str] = field(default_factory=list)
    young_kept: int = 0  # orphans still inside the grace period, left for a later sweep


def _referenced() -> set[str]:
    keys: set[str] = set()
    for model in (ModelVersion, Export, Dataset):
        keys.update(model.objects.exclude(artifact_key="").values_list("artifact_key", flat=True))
    return keys


def orphans_sweep(*, now: dt.datetime | None = None, dry_run: bool = False) -> Sweep:
    """Delete the blobs no record names, once they are older than the grace period."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.MODELGATE_ORPHAN_GRACE_HOURS)
    referenced = _referenced()
    sweep = Sweep()
    for area in AREAS:
        for key, changed in blob_list(area):
            sweep.scanned += 1
            if key in referenced:
                continue
            if changed > cutoff:
                sweep.young_kept += 1
                continue
            sweep.orphans.append(key)
            if not dry_run:
                blob_delete(key)
    if sweep.orphans and not dry_run:
        log.warning("deleted %d orphan blob(s) from the store", len(sweep.orphans))
        event_record(
            kind=EventKind.STORE_ORPHANS_DELETED,
            actor=ACTOR,
            data={"keys": sweep.orphans[:1000], "count": len(sweep.orphans), "scanned": sweep.scanned},
        )
    return sweep

"""A tamper-evident audit log: the events are chained by hashes, and ``audit_verify`` finds an edit.

Events are written freely, in the transactions of the changes they record (no global lock on the
write path). ``audit_seal`` then chains the committed events that are not sealed yet, in id order,
under one lock: each gets the next ``seq``, the previous sealed event's hash (``prev_hash``) and its
own ``hash`` = sha256(prev_hash + its canonical content). Beat seals every minute
(``MODELGATE_AUDIT_SEAL_SECONDS``).

``audit_verify`` walks the chain in ``seq`` order and recomputes every hash. An edited event (its kind,
actor, subject, data or time) no longer matches its hash. A deleted one leaves a gap in ``seq``. An
edited hash breaks the next event's ``prev_hash``. Someone who can rewrite the whole table can rewrite
the whole chain too: publish the head (``manage.py verify_audit`` prints it) somewhere they cannot
write, and compare.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from django.db import connection, transaction

from registry.models import Event

SEAL_BATCH = 5000
# An arbitrary 64-bit key for PostgreSQL's advisory lock: one sealer at a time.
_SEAL_LOCK = 0x4D47_4155_4449_54  # "MGAUDIT"
GENESIS = "0" * 64
_FIELDS = ("id", "kind", "actor", "model_id", "version_id", "dataset_id", "data", "at")


def event_hash(prev_hash: str, row: dict) -> str:
    """The hash of one event: its content, canonical JSON, chained to the previous event's hash."""
    content = {
        "id": row["id"],
        "kind": row["kind"],
        "actor": row["actor"],
        "model": row["model_id"],
        "version": row["version_id"],
        "dataset": row["dataset_id"],
        "data": row["data"],
        "at": row["at"].isoformat(),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _lock() -> bool:
    if connection.vendor != "postgresql":
        return True  # SQLite has one writer at a time anyway
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_SEAL_LOCK])
        return bool(cursor.fetchone()[0])


def audit_seal(*, batch: int = SEAL_BATCH) -> int:
    """Chain the committed events that are not sealed yet; returns how many were sealed.

    Idempotent and safe to run from several workers at once: one holds the lock, the others return 0.
    """
    sealed = 0
    while True:
        with transaction.atomic():
            if not _lock():
                return sealed
            head = Event.objects.filter(seq__isnull=False).order_by("-seq").values_list("seq", "hash").first()
            seq, prev = head if head else (0, GENESIS)
            rows = list(Event.objects.filter(seq__isnull=True).order_by("id").values(*_FIELDS)[:batch])
            if not rows:
                return sealed
            updates = []
            for row in rows:
                seq += 1
                digest = event_hash(prev, row)
                updates.append(Event(id=row["id"], seq=seq, prev_hash=prev, hash=digest))
                prev = digest
            Event.objects.bulk_update(updates, ["seq", "prev_hash", "hash"], batch_size=1000)
            sealed += len(updates)
        if len(rows) < batch:
            return sealed


@dataclass
class Verification:
    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    unsealed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def audit_verify(*, max_problems: int = 100) -> Verification:
    """Recompute the whole chain, in ``seq`` order, reading in chunks (constant memory)."""
    result = Verification(unsealed=Event.objects.filter(seq__isnull=True).count())
    expected_seq, prev = 1, GENESIS
    rows = (
        Event.objects.filter(seq__isnull=False).order_by("seq").values(*_FIELDS, "seq", "prev_hash", "hash")
    )
    for row in rows.iterator(chunk_size=2000):
        if len(result.problems) >= max_problems:
            result.problems.append("… stopped after too many problems")
            break
        where = f"event {row['id']} (seq {row['seq']}, {row['kind']} at {row['at']:%Y-%m-%d %H:%M:%S})"
        if row["seq"] != expected_seq:
            result.problems.append(
                f"seq {expected_seq}..{row['seq'] - 1} missing before {where}: events were deleted"
            )
        if row["prev_hash"] != prev:
            result.problems.append(f"{where}: its prev_hash does not match the event before it")
        if event_hash(row["prev_hash"], row) != row["hash"]:
            result.problems.append(f"{where}: its content does not match its hash: it was edited")
        prev, expected_seq = row["hash"], row["seq"] + 1
        result.checked += 1
        result.head_seq, result.head_hash = row["seq"], row["hash"]
    return result

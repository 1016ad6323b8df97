"""A shadow worker SIGKILLed in the middle of its batches.

The run's cursor and statistics move together in one compare-and-set (a checkpoint), so the records
checkpointed before the kill stay counted, those folded since are lost whole, and the run is taken over
from its cursor once its lease expires: every traffic record is counted exactly once, and one verdict is
written.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from lifecycle import shadow
from lifecycle.traffic import traffic_record
from registry.models import Event, ShadowRun, TrafficRecord
from tests import builders
from tests.conftest import wait_for_status
from tests.lifecycle.test_pipeline import set_policy
from tests.serving.test_shadow import rows, served_champion, shadow_policy, version_from

pytestmark = pytest.mark.workers

RECORDS = 60_000  # many checkpoints: the kill lands with some written and some not


def test_a_worker_killed_mid_shadow_counts_every_record_once_after_the_takeover(
    fresh_workers, fraud_model, owner, tmp_path
):
    set_policy(owner, shadow_policy(min_requests=RECORDS))
    champion = served_champion(fraud_model, tmp_path / "1")
    candidate = version_from(fraud_model, builders.threshold_onnx_classifier(tmp_path / "2", scale=1.0001), 2)
    run = shadow.shadow_start(version=candidate, champion=champion, actor="tests")
    TrafficRecord.objects.bulk_create(
        (
            traffic_record(model_id=fraud_model.pk, request_id=f"r{i}", inputs=row[np.newaxis], rows=1)
            for i, row in enumerate(rows(RECORDS, seed=11))
        ),
        batch_size=5000,
    )
    # A checkpoint after every batch, so that the kill lands between some written and some not.
    fast = {
        "MODELGATE_SHADOW_SECONDS": "1",
        "MODELGATE_SHADOW_LEASE_SECONDS": "4",
        "MODELGATE_SHADOW_CHECKPOINT_SECONDS": "0",
    }
    worker = fresh_workers.start(concurrency=1, beat=True, extra_env=fast)

    deadline = time.monotonic() + 120
    while ShadowRun.objects.get(pk=run.pk).requests == 0:
        assert time.monotonic() < deadline, "the shadow never wrote a batch"
        time.sleep(0.01)
    fresh_workers.kill(worker)
    killed = ShadowRun.objects.get(pk=run.pk)
    assert 0 < killed.requests < RECORDS, killed.requests  # the kill landed mid-run
    # The cursor and the statistics moved together: every record up to the cursor is counted, no other.
    assert killed.requests == TrafficRecord.objects.filter(id__lte=killed.cursor).count()
    assert killed.lease_expires_at is not None and killed.status == "running"

    fresh_workers.start(concurrency=1, beat=True, extra_env=fast)
    version = wait_for_status("fraud", 2, {"awaiting_approval", "rejected"}, timeout=180)

    assert version.status == "awaiting_approval", version.status_reason
    done = ShadowRun.objects.get(pk=run.pk)
    assert (done.status, done.requests, done.rows, done.errors) == ("passed", RECORDS, RECORDS, 0)
    assert done.cursor == TrafficRecord.objects.order_by("-id").values_list("id", flat=True)[0]
    assert ShadowRun.objects.filter(candidate=version).count() == 1
    assert Event.objects.filter(version=version, kind="shadow.completed").count() == 1

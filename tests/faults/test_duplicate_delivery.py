"""Duplicate deliveries, as a Redis visibility-timeout redelivery makes them: the same gate and export
tasks sent again, while the first is running and after it finished, do the work once."""

from __future__ import annotations

import time

import pytest

from registry.models import Event, Export, GateResult, ModelVersion
from tests import builders
from tests.conftest import push, wait_for_status
from tests.lifecycle.test_pipeline import set_policy
from workers.exports import run_export
from workers.tasks import run_gates

pytestmark = pytest.mark.workers


def wait_for_export(version: ModelVersion, timeout: float = 180) -> Export:
    """Exports run beside the approval request: wait for the ONNX branch to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = Export.objects.filter(version=version, format="onnx").first()
        if export is not None and export.status in {"passed", "failed", "not_applicable"}:
            return export
        time.sleep(0.3)
    raise TimeoutError("the onnx export did not end")


def test_gate_and_export_tasks_delivered_again_do_their_work_once(
    fresh_workers, fraud_model, owner, publisher, tmp_path
):
    fresh_workers.start(concurrency=2)  # two pool children: the copies can run at the same time
    set_policy(owner, {"exports": {"formats": ["onnx"], "required": ["onnx"]}})
    push(publisher.client, "fraud", builders.tiny_keras_classifier(tmp_path))
    version = ModelVersion.objects.get(model=fraud_model, version=1)
    for _ in range(3):  # copies of the message while the first one runs
        run_gates.delay(version.pk)

    version = wait_for_status("fraud", 1, {"awaiting_approval", "rejected"}, timeout=180)
    assert version.status == "awaiting_approval", version.status_reason
    export = wait_for_export(version)
    assert export.status == "passed", export.error
    before = (export.attempts, export.finished_at, export.sha256)

    for _ in range(3):  # copies after the work is done
        run_gates.delay(version.pk)
        run_export.delay(export.pk)
    # A ping through the same queues: once it is answered, the copies ahead of it were handled.
    push(publisher.client, "fraud", builders.tiny_keras_classifier(tmp_path / "2", seed=1))
    wait_for_export(wait_for_status("fraud", 2, {"awaiting_approval", "rejected"}, timeout=180))

    gates = list(GateResult.objects.filter(version=version).values_list("attempt", "gate"))
    assert sorted(gates) == [(1, "loads"), (1, "signature_compatible")]
    export.refresh_from_db()
    assert (export.attempts, export.finished_at, export.sha256) == before
    assert Export.objects.filter(version=version).count() == 1
    assert Event.objects.filter(version=version, kind="gates.completed").count() == 1
    assert Event.objects.filter(version=version, kind="export.completed").count() == 1
    assert Event.objects.filter(version=version, kind="exports.completed").count() == 1
    transitions = list(
        Event.objects.filter(version=version, kind="version.transitioned").values_list("data__to", flat=True)
    )
    assert transitions.count("awaiting_approval") == 1

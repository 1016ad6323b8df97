"""Workers SIGKILLed mid-task, and the artifact store unreachable during a push.

A worker that dies mid-gate or mid-conversion leaves a lease behind; when it expires the reconciler hands
the step out again, so each step's results exist once and no partial file is left in the store. A model
that kills its worker every time is rejected after the attempt limit instead of looping.
"""

from __future__ import annotations

import time

import pytest

from lifecycle.pipeline import pipeline_stuck
from registry.models import Event, Export, GateResult, ModelVersion
from tests import builders
from tests.conftest import push, wait_for_status
from tests.lifecycle.test_exports import export_policy, pushed, sha256_of, wait_for_exports
from tests.lifecycle.test_pipeline import set_policy


@pytest.mark.workers
def test_a_worker_killed_mid_gate_is_finished_by_the_reconciler_with_one_set_of_results(
    fresh_workers, fraud_model, publisher, tmp_path
):
    keras_path = builders.tiny_keras_classifier(tmp_path)
    lease = {"MODELGATE_TASK_LEASE_SECONDS": "8", "MODELGATE_RECONCILE_SECONDS": "1"}
    worker = fresh_workers.start(concurrency=1, extra_env=lease)
    push(publisher.client, "fraud", keras_path)

    # Loading a Keras model imports TensorFlow in the worker, which takes seconds: kill it in there.
    wait_for_status("fraud", 1, {"validating"}, timeout=60)
    fresh_workers.kill(worker)
    version = ModelVersion.objects.get(model=fraud_model, version=1)
    assert version.status == "validating"
    assert not GateResult.objects.filter(version=version).exists()
    assert pipeline_stuck() == []  # the lease still holds

    fresh_workers.start(concurrency=1, beat=True, extra_env=lease)
    version = wait_for_status("fraud", 1, timeout=180)

    assert version.status == "awaiting_approval"
    results = list(GateResult.objects.filter(version=version).values_list("attempt", "gate"))
    assert sorted(results) == [(1, "loads"), (1, "signature_compatible")]
    assert Event.objects.filter(version=version, kind="task.reclaimed").count() >= 1
    assert Event.objects.filter(version=version, kind="gates.completed").count() == 1


@pytest.mark.workers
def test_a_model_that_kills_its_worker_every_time_is_rejected_after_the_attempt_limit(
    fresh_workers, fraud_model, publisher, tmp_path, settings
):
    """The attempt counter lives in the database, so a poison version cannot loop forever."""
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))
    version = ModelVersion.objects.get(model=fraud_model, version=1)
    # Simulate three claims whose workers died: each left an expired lease behind.
    ModelVersion.objects.filter(pk=version.pk).update(task_attempts=settings.MODELGATE_MAX_TASK_ATTEMPTS)
    fresh_workers.start(concurrency=1, beat=True, extra_env={"MODELGATE_RECONCILE_SECONDS": "1"})

    version = wait_for_status("fraud", 1, timeout=60)

    assert version.status == "rejected"
    assert "did not finish after" in version.status_reason
    assert not GateResult.objects.filter(version=version).exists()


@pytest.mark.workers
def test_a_worker_killed_mid_conversion_leaves_one_export_per_format_and_no_partial_files(
    fresh_workers, fraud_model, owner, publisher, models, artifact_dir
):
    lease = {
        "MODELGATE_TASK_LEASE_SECONDS": "8",
        "MODELGATE_RECONCILE_SECONDS": "1",
        "MODELGATE_RECONCILE_GRACE_SECONDS": "1",
    }
    set_policy(owner, export_policy(formats=["onnx", "tflite", "tfjs"]))
    worker = fresh_workers.start(concurrency=1, extra_env=lease)
    version = pushed(publisher, models["conv"], 1)

    deadline = time.monotonic() + 60
    while not Export.objects.filter(version=version, status="running").exists():
        assert time.monotonic() < deadline, "no export started"
        time.sleep(0.05)
    fresh_workers.kill(worker)
    killed = Export.objects.get(version=version, status="running")
    assert not Export.objects.filter(version=version).exclude(sha256="").exists()

    fresh_workers.start(concurrency=1, beat=True, extra_env=lease)
    exports = wait_for_exports(version, timeout=180)

    assert Export.objects.filter(version=version).count() == 3
    assert all(e.status == "passed" for e in exports.values()), {f: e.error for f, e in exports.items()}
    assert exports[killed.format].attempts >= 2
    assert Event.objects.filter(version=version, kind="task.reclaimed").exists()
    assert Event.objects.filter(version=version, kind="exports.completed").count() == 1
    stored = [p for p in (artifact_dir / "exports").rglob("*") if p.is_file()]
    assert not [p for p in stored if p.name.endswith(".part")]
    assert {p.name for p in stored} >= {e.sha256 for e in exports.values()}
    for blob in stored:
        assert sha256_of(blob.read_bytes()) == blob.name  # every visible file is whole


def test_an_unreachable_s3_store_gives_503_and_writes_no_version(
    settings, monkeypatch, fraud_model, publisher, tmp_path
):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.AWS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    settings.ARTIFACT_STORE = "s3://models/registry"

    response = push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert not fraud_model.versions.exists()

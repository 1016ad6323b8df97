"""Redis stopped under a push and under a running pipeline, then started again, empty.

The broker is not the source of truth: the database is. A push made while Redis is away still
succeeds, and a pipeline whose messages died with Redis is picked up again by the reconcilers once it is
back, by the same web process, workers and beat, none of them restarted. Redis runs here without
persistence, so every queued and unacknowledged message is lost: the worst case.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from registry.models import Event, Export, GateResult, ModelVersion
from tests import builders
from tests.conftest import wait_for_status
from tests.faults.test_duplicate_delivery import wait_for_export
from tests.lifecycle.test_pipeline import set_policy
from tests.processes import Web

pytestmark = pytest.mark.workers

# The reconcilers look every second, and a newly registered version waits two before they step in.
FAST = {
    "MODELGATE_RECONCILE_SECONDS": "1",
    "MODELGATE_RECONCILE_GRACE_SECONDS": "2",
    "MODELGATE_TASK_LEASE_SECONDS": "30",
}


def assert_store_whole(artifact_dir: Path) -> None:
    """No partial upload or conversion is left, and every blob's name is the sha256 of its bytes."""
    for path in artifact_dir.rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path


def assert_validated_once(version: ModelVersion) -> None:
    gates = sorted(GateResult.objects.filter(version=version).values_list("attempt", "gate"))
    assert gates == [(1, "loads"), (1, "signature_compatible")]
    assert Event.objects.filter(version=version, kind="gates.completed").count() == 1
    moves = list(
        Event.objects.filter(version=version, kind="version.transitioned").values_list("data__to", flat=True)
    )
    assert moves.count("awaiting_approval") == 1, moves


def test_a_push_while_redis_is_down_is_kept_and_validated_once_redis_is_back(
    fresh_workers, private_redis, web_processes, worker_env, fraud_model, publisher, tmp_path, artifact_dir
):
    env = {**worker_env, "CELERY_BROKER_URL": private_redis.url, **FAST}
    fresh_workers.start(concurrency=1, beat=True, extra_env=env)
    web = Web(env, tmp_path)
    web_processes.append(web)
    model = builders.tiny_onnx_model(tmp_path)

    private_redis.kill()
    with web.client(publisher.token) as http:
        ready = http.get("/readyz")
        with model.open("rb") as fh:
            response = http.post(
                "/api/v1/models/fraud/versions/", files={"artifact": fh}, data={"metadata": json.dumps({})}
            )

    assert ready.status_code == 503 and not ready.json()["checks"]["broker"]["ok"]
    assert response.status_code == 201, response.text
    time.sleep(4)  # the workers and beat keep knocking on a closed door meanwhile
    assert ModelVersion.objects.get(model=fraud_model, version=1).status == "registered"
    assert "the reconciler will retry" in web.log_path.read_text()

    private_redis.start()
    version = wait_for_status("fraud", 1, timeout=120)

    assert version.status == "awaiting_approval", version.status_reason
    assert ModelVersion.objects.filter(model=fraud_model).count() == 1
    assert_validated_once(version)
    assert_store_whole(artifact_dir)


def test_redis_killed_during_a_running_pipeline_ends_with_every_step_done_once(
    fresh_workers,
    private_redis,
    web_processes,
    worker_env,
    fraud_model,
    owner,
    publisher,
    tmp_path,
    artifact_dir,
):
    env = {**worker_env, "CELERY_BROKER_URL": private_redis.url, **FAST}
    set_policy(owner, {"exports": {"formats": ["onnx"], "required": ["onnx"]}})
    fresh_workers.start(concurrency=1, beat=True, extra_env=env)
    web = Web(env, tmp_path)
    web_processes.append(web)
    model = builders.tiny_keras_classifier(tmp_path)

    with web.client(publisher.token) as http, model.open("rb") as fh:
        response = http.post(
            "/api/v1/models/fraud/versions/", files={"artifact": fh}, data={"metadata": json.dumps({})}
        )
    assert response.status_code == 201, response.text
    # Loading a Keras model imports TensorFlow in the worker, which takes seconds: Redis dies meanwhile.
    wait_for_status("fraud", 1, {"validating"}, timeout=60)
    private_redis.kill()
    time.sleep(5)
    private_redis.start()

    version = wait_for_status("fraud", 1, {"awaiting_approval", "rejected"}, timeout=240)
    assert version.status == "awaiting_approval", version.status_reason
    export = wait_for_export(version, timeout=240)

    assert export.status == "passed", export.error
    assert Export.objects.filter(version=version).count() == 1
    assert Event.objects.filter(version=version, kind="export.completed").count() == 1
    assert Event.objects.filter(version=version, kind="exports.completed").count() == 1
    assert_validated_once(version)
    assert_store_whole(artifact_dir)

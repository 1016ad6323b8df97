"""The validation pipeline on real Celery workers: push → validating → awaiting_approval or rejected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lifecycle.pipeline import validation_run
from lifecycle.states import version_transition
from registry.models import Alias, Event, GateResult, ModelVersion
from tests import builders
from tests.conftest import push, wait_for_status


def onnx_that_fails_to_load(tmp_path: Path) -> Path:
    """Passes onnx.checker (no shape inference) but onnxruntime refuses it: MatMul of [N,4] by [3,2]."""
    weights = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], np.zeros(6, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    return path


def set_policy(owner, policy: dict) -> None:
    response = owner.client.put("/api/v1/models/fraud/policy/", policy, format="json")
    assert response.status_code == 200, response.content


def make_champion(version: ModelVersion) -> None:
    """Put a version in production the way promotion will (step 3 owns the real path)."""
    for to in ("awaiting_approval", "production"):
        if version.status != to:
            version = version_transition(version_id=version.pk, to=to, actor="tests")
    Alias.objects.update_or_create(model=version.model, name="champion", defaults={"version": version})


def test_a_good_first_version_passes_its_gates_and_awaits_approval(
    celery_workers, fraud_model, publisher, tmp_path
):
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))

    version = wait_for_status("fraud", 1)

    assert version.status == "awaiting_approval"
    assert version.signature["inputs"][0]["shape"][-1] == 4
    gates = {g.gate: g for g in GateResult.objects.filter(version=version)}
    assert gates["loads"].passed is True
    assert gates["signature_compatible"].passed is None
    assert gates["signature_compatible"].skipped_reason == "no champion to compare with"
    skipped = Event.objects.get(version=version, kind="stage.skipped")
    assert skipped.data == {"stage": "shadow", "reason": version.status_reason}
    assert "no champion" in version.status_reason
    moves = list(
        Event.objects.filter(version=version, kind="version.transitioned").values_list("data", flat=True)
    )
    assert [(m["from"], m["to"]) for m in moves] == [
        ("registered", "validating"),
        ("validating", "awaiting_approval"),
    ]


def test_a_model_that_does_not_load_is_rejected_with_the_runtime_error(
    celery_workers, fraud_model, publisher, tmp_path
):
    push(publisher.client, "fraud", onnx_that_fails_to_load(tmp_path))

    version = wait_for_status("fraud", 1)

    assert version.status == "rejected"
    assert version.status_reason.startswith("loads: ")
    assert GateResult.objects.get(version=version, gate="loads").passed is False


def test_a_size_gate_rejects_a_version_over_the_limit(
    celery_workers, fraud_model, owner, publisher, tmp_path
):
    set_policy(owner, {"gates": [{"kind": "loads"}, {"kind": "size", "max_mb": 0.001}]})
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path, n_features=64, n_outputs=32))

    version = wait_for_status("fraud", 1)

    assert version.status == "rejected"
    assert "MB > 0.001 MB" in version.status_reason
    size = GateResult.objects.get(version=version, gate="size")
    assert (size.passed, size.threshold) == (False, 0.001)


def test_every_gate_kind_the_policy_accepts_has_an_implementation():
    from typing import get_args

    from lifecycle.gates import DATASET_GATES, GATE_KINDS
    from lifecycle.policy import Gate

    union = get_args(get_args(Gate)[0])
    kinds = {get_args(cls.model_fields["kind"].annotation)[0] for cls in union}
    assert kinds == set(GATE_KINDS) | DATASET_GATES


def test_a_version_whose_signature_differs_from_the_champion_is_rejected(
    celery_workers, fraud_model, publisher, tmp_path
):
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "1", n_features=4))
    make_champion(wait_for_status("fraud", 1))
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "2", n_features=5))

    version = wait_for_status("fraud", 2)

    assert version.status == "rejected"
    assert "signature differs from the champion v1" in version.status_reason
    # With a champion a version that passes its gates goes on to shadow it.
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "3", n_features=4, seed=3))
    third = wait_for_status("fraud", 3)
    assert third.status == "shadowing"
    assert third.shadow_runs.get().baseline.version == 1


@pytest.mark.django_db(transaction=True)
def test_running_the_validation_step_twice_does_nothing_the_second_time(fraud_model, publisher, tmp_path):
    from registry.services import Upload, model_version_register

    path = builders.tiny_onnx_model(tmp_path)
    import hashlib

    upload = Upload(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size=path.stat().st_size,
        filename="m.onnx",
    )
    version, _ = model_version_register(model=fraud_model, upload=upload, metadata={}, actor=publisher.user)

    assert validation_run(version.pk).status == "awaiting_approval"
    events = Event.objects.count()
    results = GateResult.objects.count()

    assert validation_run(version.pk) is None
    assert (Event.objects.count(), GateResult.objects.count()) == (events, results)

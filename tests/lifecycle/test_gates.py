"""Validation gates computed by the worker on registered data: per slice, against the champion, in the
model's real runtime, whatever format it came in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from registry.models import Dataset, GateResult, ModelVersion, VersionDataset
from tests import builders
from tests.conftest import ROOT, push, wait_for_status
from tests.country import country_frame, train_classifier
from tests.lifecycle.test_pipeline import make_champion, set_policy

pytestmark = pytest.mark.workers


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Models trained once per session: a good one, a barely trained one, and the good one's other formats."""
    root = tmp_path_factory.mktemp("trained")
    frame = country_frame(3000, seed=1)
    good = train_classifier(frame, root / "good" / "model.keras", epochs=30)
    return {
        "good": good,
        "weak": train_classifier(frame, root / "weak" / "model.keras", epochs=0, seed=3),
        "savedmodel": builders.keras_model_to_savedmodel_zip(good, root / "sm"),
        "onnx": builders.keras_model_to_onnx(good, root / "onnx"),
    }


@pytest.fixture
def holdout(owner, tmp_path) -> Dataset:
    path = tmp_path / "holdout.csv"
    country_frame(2000, seed=2).to_csv(path, index=False)
    with path.open("rb") as fh:
        response = owner.client.post("/api/v1/datasets/", {"file": fh, "name": "holdout"}, format="multipart")
    assert response.status_code == 201, response.content
    return Dataset.objects.get(name="holdout")


RECALL_BY_COUNTRY = {
    "kind": "metric",
    "metric": "recall",
    "dataset": "holdout",
    "label": "y",
    "slice_by": "country",
    "min": 0.8,
}
ACCURACY = {"kind": "metric", "metric": "accuracy", "dataset": "holdout", "label": "y", "min": 0.8}


def results(version: ModelVersion, **filters) -> list[GateResult]:
    return list(
        GateResult.objects.filter(version=version, **filters).order_by("attempt", "gate_index", "slice")
    )


def test_a_model_bad_on_one_country_is_rejected_by_a_sliced_gate_naming_it(
    celery_workers, fraud_model, owner, publisher, holdout, trained
):
    set_policy(owner, {"gates": [{"kind": "loads"}, RECALL_BY_COUNTRY]})
    push(publisher.client, "fraud", trained["good"])

    version = wait_for_status("fraud", 1)

    assert version.status == "rejected"
    br = GateResult.objects.get(version=version, gate="metric", slice="country=BR")
    assert br.passed is False and br.value < 0.8 and br.threshold == 0.8
    assert br.rows == (country_frame(2000, seed=2)["country"] == "BR").sum()
    assert f"recall on country=BR is {br.value:.4f}".rstrip("0") in version.status_reason
    assert version.status_reason.endswith("< 0.8")
    overall = GateResult.objects.get(version=version, gate="metric", slice="")
    assert overall.passed is True and overall.value > 0.8
    others = GateResult.objects.filter(version=version, gate="metric").exclude(slice__in=["", "country=BR"])
    assert others.count() == 4 and all(r.passed for r in others)
    # The scored dataset joins the lineage with the role "validation".
    assert VersionDataset.objects.filter(version=version, dataset=holdout, role="validation").exists()


def test_writing_a_policy_has_a_gates_worker_decode_its_dataset_before_any_push(
    fresh_workers, fraud_model, owner, holdout, tmp_path
):
    cache = tmp_path / "worker-dataset-cache"
    fresh_workers.start(queues="gates", extra_env={"MODELGATE_DATASET_CACHE_DIR": str(cache)})

    set_policy(owner, {"gates": [{"kind": "loads"}, RECALL_BY_COUNTRY]})

    deadline = time.monotonic() + 60
    while not list(cache.glob("*/meta.json")):
        assert time.monotonic() < deadline, "no gates worker decoded the policy's dataset"
        time.sleep(0.2)
    (meta,) = cache.glob("*/meta.json")
    decoded = json.loads(meta.read_text())
    assert decoded["dataset"] == f"holdout:{holdout.version}" and decoded["slice_columns"] == ["country"]
    assert decoded["rows"] == 2000 and sum(decoded["slice_rows"]["country"]) == 2000


def test_the_same_model_without_the_slice_gate_passes(
    celery_workers, fraud_model, owner, publisher, holdout, trained
):
    set_policy(owner, {"gates": [{"kind": "loads"}, {**RECALL_BY_COUNTRY, "slice_by": None}, ACCURACY]})
    push(publisher.client, "fraud", trained["good"])

    version = wait_for_status("fraud", 1)

    assert version.status == "awaiting_approval", version.status_reason
    assert {r.slice for r in results(version, gate="metric")} == {""}


def test_no_regression_rejects_a_worse_candidate_showing_both_values(
    celery_workers, fraud_model, owner, publisher, holdout, trained
):
    regression = {
        "kind": "no_regression",
        "metric": "accuracy",
        "dataset": "holdout",
        "label": "y",
        "max_drop": 0.01,
    }
    set_policy(owner, {"gates": [{"kind": "loads"}, regression]})
    push(publisher.client, "fraud", trained["good"])
    first = wait_for_status("fraud", 1)
    skipped = GateResult.objects.get(version=first, gate="no_regression")
    assert (skipped.passed, skipped.skipped_reason) == (
        None,
        "no champion: the first version of a model has no baseline",
    )
    make_champion(first)

    push(publisher.client, "fraud", trained["weak"])
    worse = wait_for_status("fraud", 2)

    assert worse.status == "rejected"
    gate = GateResult.objects.get(version=worse, gate="no_regression", slice="")
    assert gate.passed is False and gate.baseline - gate.value > 0.01
    assert f"vs the champion v1's {gate.baseline:.4f}".rstrip("0") in worse.status_reason


def test_no_regression_passes_a_candidate_at_least_as_good(
    celery_workers, fraud_model, owner, publisher, holdout, trained
):
    regression = {
        "kind": "no_regression",
        "metric": "roc_auc",
        "dataset": "holdout",
        "label": "y",
        "max_drop": 0.005,
    }
    set_policy(owner, {"gates": [{"kind": "loads"}, regression]})
    push(publisher.client, "fraud", trained["weak"])
    make_champion(wait_for_status("fraud", 1))

    push(publisher.client, "fraud", trained["good"])
    better = wait_for_status("fraud", 2)

    assert better.status == "shadowing", better.status_reason  # gates passed: it shadows the champion
    gate = GateResult.objects.get(version=better, gate="no_regression", slice="")
    assert gate.passed is True and gate.value > gate.baseline


def test_the_adapters_agree_keras_savedmodel_and_onnx_give_the_same_numbers(
    celery_workers, fraud_model, owner, publisher, holdout, trained
):
    set_policy(
        owner,
        {"gates": [{"kind": "loads"}, RECALL_BY_COUNTRY, {**ACCURACY, "metric": "roc_auc", "min": 0.5}]},
    )
    for fmt in ("good", "savedmodel", "onnx"):
        push(publisher.client, "fraud", trained[fmt])

    numbers = {}
    for number in (1, 2, 3):
        version = wait_for_status("fraud", number)
        numbers[version.format] = {(r.metric, r.slice): r.value for r in results(version, gate="metric")}

    assert set(numbers) == {"keras", "savedmodel", "onnx"}
    keras_numbers = numbers["keras"]
    assert len(keras_numbers) == 7  # recall overall + 5 countries, roc_auc overall
    for fmt in ("savedmodel", "onnx"):
        assert numbers[fmt].keys() == keras_numbers.keys()
        for key, value in keras_numbers.items():
            assert abs(numbers[fmt][key] - value) <= 1e-6, (fmt, key)


def test_a_latency_gate_rejects_an_impossible_p95_and_passes_a_generous_one(
    celery_workers, fraud_model, owner, publisher, tmp_path
):
    set_policy(owner, {"gates": [{"kind": "latency", "p95_ms": 0.000001, "batch_size": 8, "runs": 20}]})
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "a"))
    slow = wait_for_status("fraud", 1)
    set_policy(owner, {"gates": [{"kind": "latency", "p95_ms": 5000, "batch_size": 8, "runs": 20}]})
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "b", seed=2))
    fast = wait_for_status("fraud", 2)

    assert slow.status == "rejected" and slow.status_reason.startswith("latency p95 is ")
    assert fast.status == "awaiting_approval"
    gate = GateResult.objects.get(version=fast, gate="latency")
    assert gate.passed is True and gate.threshold == 5000 and gate.details["batch_size"] == 8
    assert 0 < gate.details["p50_ms"] <= gate.value


def test_a_dataset_deleted_later_rejects_the_version_with_that_reason(
    celery_workers, fraud_model, owner, publisher, holdout, tmp_path
):
    set_policy(owner, {"gates": [{"kind": "loads"}, ACCURACY]})
    holdout.delete()  # the policy was valid when written; the data went away afterwards

    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))
    version = wait_for_status("fraud", 1)

    assert version.status == "rejected"
    assert version.status_reason == "metric (accuracy): dataset holdout no longer exists"


def test_revalidate_keeps_attempt_one_and_adds_attempt_two(
    celery_workers, fraud_model, owner, publisher, holdout, trained
):
    set_policy(owner, {"gates": [{"kind": "loads"}, RECALL_BY_COUNTRY]})
    push(publisher.client, "fraud", trained["good"])
    assert wait_for_status("fraud", 1).status == "rejected"
    set_policy(owner, {"gates": [{"kind": "loads"}, {**RECALL_BY_COUNTRY, "slice_by": None}]})

    response = publisher.client.post("/api/v1/models/fraud/versions/1/revalidate/")
    assert response.status_code == 202, response.content
    version = wait_for_status("fraud", 1, {"awaiting_approval", "rejected"})

    assert version.status == "awaiting_approval"
    attempts = {r.attempt for r in results(version)}
    assert attempts == {1, 2}
    assert {r.slice for r in results(version, attempt=1, gate="metric")} >= {"country=BR"}
    assert {r.slice for r in results(version, attempt=2, gate="metric")} == {""}
    api = owner.client.get("/api/v1/models/fraud/versions/1/").json()
    assert {g["attempt"] for g in api["gates"]} == {1, 2} and api["gate_attempt"] == 2
    again = owner.client.post("/api/v1/models/fraud/versions/1/revalidate/")
    assert again.status_code == 202  # awaiting_approval may be revalidated too
    wait_for_status("fraud", 1, {"awaiting_approval", "rejected"})


def modelgate(live_server, actor, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MODELGATE_URL": live_server.url,
        "MODELGATE_TOKEN": actor.token,
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "modelgate_client", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.django_db(transaction=True)
def test_the_cli_exits_1_printing_the_failed_gate_and_0_for_a_passing_version(
    live_server, celery_workers, fraud_model, owner, publisher, holdout, trained
):
    set_policy(owner, {"gates": [{"kind": "loads"}, RECALL_BY_COUNTRY]})
    rejected = modelgate(
        live_server, publisher, "push", str(trained["good"]), "--model", "fraud", "--wait", "--timeout", "240"
    )
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    output = rejected.stdout + rejected.stderr
    assert "recall on country=BR" in output and "metric" in output

    set_policy(owner, {"gates": [{"kind": "loads"}, ACCURACY]})
    passing = modelgate(
        live_server, publisher, "push", str(trained["onnx"]), "--model", "fraud", "--wait", "--timeout", "240"
    )
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "awaiting_approval" in passing.stdout + passing.stderr


MEMORY_PROBE = """
import json, resource, sys
import django
django.setup()
from lifecycle.gates import gates_evaluate
from registry.models import ModelVersion
version = ModelVersion.objects.select_related("model").get(pk=int(sys.argv[1]))
import lifecycle.runtimes, sklearn.metrics, pandas, pyarrow.parquet  # imports are not the dataset's cost
import lifecycle.dataset_cache as cache
def entries():
    return cache.cache_dir().exists() and any(not p.name.startswith(".") for p in cache.cache_dir().iterdir())
entry_before = entries()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = gates_evaluate(version)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gate = [o for o in result.outcomes if o.gate == "metric" and not o.slice][0]
print(json.dumps({"growth_mib": (after - before) / 1024, "rows": gate.rows, "value": gate.value,
                  "entry_before": entry_before, "entry_after": entries()}))
"""


@pytest.mark.django_db(transaction=True)
def test_a_million_row_dataset_is_scored_with_bounded_memory(
    worker_env, fraud_model, owner, publisher, tmp_path
):
    frame = country_frame(1_000_000, seed=5)
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False, float_format="%.5f")
    del frame
    with path.open("rb") as fh:
        assert (
            owner.client.post(
                "/api/v1/datasets/", {"file": fh, "name": "big"}, format="multipart"
            ).status_code
            == 201
        )
    path.unlink()
    gate = {**ACCURACY, "dataset": "big", "slice_by": "country", "min": 0.0}
    set_policy(owner, {"gates": [{"kind": "loads"}, gate]})
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))
    version = ModelVersion.objects.get(model=fraud_model, version=1)

    # Twice, in fresh processes with a cache of their own (a shared worker may be scoring the same
    # version meanwhile): the first parses the CSV in chunks and fills the cache, the second reads it.
    measured = []
    for _ in range(2):
        probe = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(version.pk)],
            env={
                **worker_env,
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "MODELGATE_DATASET_CACHE_DIR": str(tmp_path / "probe-cache"),
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        measured.append(json.loads(probe.stdout.strip().splitlines()[-1]))
    parsed, cached = measured
    assert (parsed["entry_before"], parsed["entry_after"], cached["entry_before"]) == (False, True, True)
    for run in measured:
        assert run["rows"] == 1_000_000
        assert run["growth_mib"] < 500, run
        assert np.isfinite(run["value"])
    assert cached["value"] == parsed["value"]
    print(
        f"1M-row evaluation: peak RSS growth {parsed['growth_mib']:.0f} MiB parsing, {cached['growth_mib']:.0f} from the cache"
    )

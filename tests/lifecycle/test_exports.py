"""Export branches on real workers: ONNX, TFLite and TF.js from one source, each checked in its own
runtime (onnxruntime, the TFLite interpreter, Node with @tensorflow/tfjs)."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import pytest

from lifecycle.exports import (
    exports_complete,
    exports_reconcile,
    exports_required_ok,
    exports_start,
    exports_stuck,
)
from registry.models import Event, Export, ModelVersion, Usage
from tests import builders
from tests.conftest import push, wait_for_status
from tests.country import country_frame
from tests.lifecycle.test_pipeline import set_policy

ALL_FORMATS = ["onnx", "tflite", "tflite-dynamic", "tfjs"]
K = 16  # parity samples: enough to see a difference, few enough to keep the suite fast


# --- until registry/api/urls.py includes the export endpoints, route them from here -------------------


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Built once per session: a trained Dense classifier, an untrained Conv2D one, a model TFLite cannot
    convert (two seeds: two versions with different bytes), and an ONNX classifier."""
    root = tmp_path_factory.mktemp("export-models")
    return {
        "dense": builders.tiny_keras_classifier(root / "dense"),
        "conv": builders.small_conv2d_keras_model(root / "conv"),
        "bicubic": builders.keras_model_without_tflite_kernels(root / "bicubic", seed=0),
        "bicubic-2": builders.keras_model_without_tflite_kernels(root / "bicubic", seed=1),
        "onnx": builders.tiny_onnx_model(root / "onnx"),
    }


def export_policy(formats=ALL_FORMATS, required=(), **extra) -> dict:
    return {"exports": {"formats": list(formats), "required": list(required), "parity_samples": K, **extra}}


def pushed(publisher, path: Path, number: int) -> ModelVersion:
    """Push, wait for the gates, and start the exports (the pipeline may have started them already)."""
    response = push(publisher.client, "fraud", path)
    assert response.status_code == 201, response.content
    version = wait_for_status("fraud", number)
    assert version.status == "awaiting_approval", version.status_reason
    exports_start(version.pk)
    return version


def wait_for_exports(version: ModelVersion, timeout: float = 180) -> dict[str, Export]:
    """Wait until the version's exports are all final and their completion is recorded."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {e.format: e for e in Export.objects.filter(version=version)}
        done = Event.objects.filter(version=version, kind="exports.completed").exists()
        if rows and done and all(e.status not in {"pending", "running"} for e in rows.values()):
            return rows
        if time.monotonic() > deadline:
            states = {f: (e.status, e.error[:200]) for f, e in rows.items()}
            raise AssertionError(f"{version} exports are not done after {timeout}s: {states}")
        time.sleep(0.2)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- conversions and parity --------------------------------------------------------------------------


@pytest.mark.workers
def test_a_dense_and_a_conv2d_keras_model_pass_parity_in_every_target_runtime(
    celery_workers, fraud_model, owner, publisher, models, tmp_path
):
    holdout = tmp_path / "holdout.csv"
    country_frame(200, seed=2).to_csv(holdout, index=False)
    with holdout.open("rb") as fh:
        owner.client.post("/api/v1/datasets/", {"file": fh, "name": "holdout"}, format="multipart")
    accuracy = {"kind": "metric", "metric": "accuracy", "dataset": "holdout", "label": "y", "min": 0.0}
    set_policy(owner, {"gates": [{"kind": "loads"}, accuracy], **export_policy()})
    dense = pushed(publisher, models["dense"], 1)
    wait_for_exports(dense)  # an export reads the policy when it runs
    set_policy(owner, export_policy())  # the image model has no tabular dataset: random inputs
    conv = pushed(publisher, models["conv"], 2)

    for version, inputs in ((dense, "dataset holdout:1 (first 16 rows)"), (conv, "random normal inputs")):
        exports = wait_for_exports(version)
        assert sorted(exports) == sorted(ALL_FORMATS)
        for fmt, export in exports.items():
            assert export.status == "passed", (version, fmt, export.error)
            p = export.parity
            assert p["passed"] is True and p["samples"] == K and p["inputs"].startswith(inputs)
            assert 0 <= p["mean_abs_diff"] <= p["max_abs_diff"] <= p["atol"]
            assert p["reference"].startswith("keras 3.")
            assert export.size > 0 and len(export.sha256) == 64 and export.artifact_key
            assert export.convert_ms > 0 and export.check_ms > 0
        assert exports["onnx"].runtime.startswith("onnxruntime ")
        assert exports["onnx"].parity["converter"].startswith("tf2onnx 1.17.0 (opset 17)")
        assert exports["tflite"].runtime.startswith("tflite (tensorflow 2.19")
        assert exports["tfjs"].runtime.startswith("@tensorflow/tfjs 4.22.0 (cpu backend, node ")
        assert exports["tflite"].parity["atol"] == 1e-4
        assert exports["tflite-dynamic"].parity["atol"] == 1e-2
        assert exports_required_ok(version) is True
        assert ModelVersion.objects.get(pk=version.pk).status == "awaiting_approval"
        kinds = list(
            Event.objects.filter(version=version, kind__startswith="export").values_list("kind", flat=True)
        )
        assert sorted(kinds) == ["export.completed"] * 4 + ["exports.completed"]
    # Quantisation really happened on the Conv2D model: smaller, and no longer bit-exact.
    conv_exports = {e.format: e for e in Export.objects.filter(version=conv)}
    assert conv_exports["tflite-dynamic"].size < conv_exports["tflite"].size / 2
    assert (
        conv_exports["tflite-dynamic"].parity["max_abs_diff"] > conv_exports["tflite"].parity["max_abs_diff"]
    )


@pytest.mark.workers
def test_an_onnx_source_is_passed_through_and_the_tensorflow_formats_are_not_applicable(
    celery_workers, fraud_model, owner, publisher, models
):
    set_policy(owner, export_policy(required=["onnx"]))
    version = pushed(publisher, models["onnx"], 1)

    exports = wait_for_exports(version)

    onnx_export = exports["onnx"]
    assert onnx_export.status == "passed" and onnx_export.parity["max_abs_diff"] == 0.0
    assert onnx_export.sha256 == version.sha256  # the pushed bytes, re-checked
    for fmt in ("tflite", "tflite-dynamic", "tfjs"):
        assert exports[fmt].status == "not_applicable"
        assert exports[fmt].error.startswith(f"{fmt} cannot be made from the pushed onnx model")
    assert exports_required_ok(version) is True
    assert ModelVersion.objects.get(pk=version.pk).status == "awaiting_approval"


@pytest.mark.workers
def test_a_failed_export_rejects_the_version_only_when_its_format_is_required(
    celery_workers, fraud_model, owner, publisher, models
):
    set_policy(owner, export_policy(formats=["onnx", "tflite", "tfjs"]))
    optional = pushed(publisher, models["bicubic"], 1)
    exports = wait_for_exports(optional)

    assert exports["onnx"].status == "passed"
    assert exports["tflite"].status == "failed"
    assert exports["tflite"].error == (
        "TFLite converter: 'tf.ResizeBicubic' op is neither a custom op nor a flex op; "
        "ops with no TFLite builtin kernel: ResizeBicubic"
    )
    assert exports["tfjs"].status == "failed" and "ResizeBicubic" in exports["tfjs"].error
    assert exports["tfjs"].error.startswith("tensorflowjs: Unsupported Ops")
    assert ModelVersion.objects.get(pk=optional.pk).status == "awaiting_approval"
    assert exports_required_ok(optional) is True

    set_policy(owner, export_policy(formats=["onnx", "tflite"], required=["tflite"]))
    required = pushed(publisher, models["bicubic-2"], 2)
    wait_for_exports(required)

    required.refresh_from_db()
    assert required.status == "rejected"
    assert required.status_reason == (
        "required export tflite failed: TFLite converter: "
        "'tf.ResizeBicubic' op is neither a custom op nor a flex op; "
        "ops with no TFLite builtin kernel: ResizeBicubic"
    )
    assert exports_required_ok(required) is False
    completed = Event.objects.get(version=required, kind="exports.completed")
    assert completed.data["required_failed"] == ["tflite"] and completed.data["passed"] is False
    moved = Event.objects.filter(version=required, kind="version.transitioned").last()
    assert (moved.actor, moved.data["from"], moved.data["to"]) == (
        "system:exports",
        "awaiting_approval",
        "rejected",
    )


@pytest.mark.workers
def test_download_of_each_format_returns_the_recorded_bytes_and_counts_as_usage(
    celery_workers, fraud_model, owner, publisher, viewer, models
):
    set_policy(owner, export_policy())
    version = pushed(publisher, models["dense"], 1)
    exports = wait_for_exports(version)

    base = "/api/v1/models/fraud/versions/1/exports/"
    listed = viewer.client.get(base)
    assert listed.status_code == 200
    assert {e["format"]: e["sha256"] for e in listed.json()} == {f: e.sha256 for f, e in exports.items()}
    for number, fmt in enumerate(ALL_FORMATS, start=1):
        response = viewer.client.get(f"{base}{fmt}/artifact/")
        assert response.status_code == 200, response.content
        body = b"".join(response.streaming_content)
        assert sha256_of(body) == exports[fmt].sha256 == response["X-Checksum-Sha256"]
        assert len(body) == exports[fmt].size
        assert Usage.objects.get(version=version).downloads == number
    tfjs_zip = b"".join(viewer.client.get(f"{base}tfjs/artifact/").streaming_content)
    with zipfile.ZipFile(io.BytesIO(tfjs_zip)) as zf:
        names = zf.namelist()
    assert names[0] == "model.json" and any(n.endswith(".bin") for n in names[1:])
    assert viewer.client.get(f"{base}coreml/artifact/").status_code == 404

    # The version page lists them: a badge, the size, the parity numbers, the runtime, a download link.
    from django.test import Client

    browser = Client()
    browser.force_login(viewer.user)
    page = browser.get("/models/fraud/versions/1/").content.decode()
    table = page[page.index('data-testid="exports"') :]
    for fmt in ALL_FORMATS:
        assert f'href="{base}{fmt}/artifact/"' in table
    assert table.count('class="badge status-production">passed<') == 4
    assert "onnxruntime 1.32" in table and "@tensorflow/tfjs 4.22.0" in table


@pytest.mark.workers
def test_a_failed_export_is_not_downloadable(celery_workers, fraud_model, owner, publisher, models):
    set_policy(owner, export_policy(formats=["tflite"]))
    wait_for_exports(pushed(publisher, models["bicubic"], 1))

    response = owner.client.get("/api/v1/models/fraud/versions/1/exports/tflite/artifact/")

    assert response.status_code == 409
    assert "ResizeBicubic" in response.json()["error"]["message"]


# --- the steps one by one (no worker) ----------------------------------------------------------------


@pytest.fixture
def registered(fraud_model, publisher):
    """Register a version without sending it to any worker, from a file path."""
    from registry.services import Upload, model_version_register

    def register(path: Path) -> ModelVersion:
        upload = Upload(
            path=path, sha256=sha256_of(path.read_bytes()), size=path.stat().st_size, filename=path.name
        )
        version, _ = model_version_register(
            model=fraud_model, upload=upload, metadata={}, actor=publisher.user
        )
        return version

    return register


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["tfjs", "onnx"])
def test_an_export_whose_weights_are_perturbed_on_disk_before_the_check_fails_parity(
    fmt, fraud_model, owner, registered, models, settings, tmp_path
):
    from lifecycle.exports import export_check, export_claim, export_convert, export_finish, export_job

    settings.VAR_DIR = tmp_path / "var"
    set_policy(owner, export_policy(formats=[fmt]))
    version = registered(models["dense"])
    export = Export.objects.create(version=version, format=fmt)

    claimed = export_claim(export.pk)
    with export_job(claimed) as job:
        built = export_convert(job)
        builders.perturb_export_weights(built.path)
        outcome = export_check(job, built)
    finished = export_finish(export_id=export.pk, attempt=claimed.attempts, outcome=outcome)

    assert finished.status == "failed" and finished.parity["passed"] is False
    assert finished.parity["max_abs_diff"] > finished.parity["atol"]
    assert finished.error.startswith("parity missed: max abs diff ")
    assert not finished.sha256 and not finished.artifact_key  # a failed export is not published


@pytest.mark.django_db
def test_a_savedmodel_source_is_converted_from_its_own_savedmodel(
    fraud_model, owner, registered, models, settings, tmp_path
):
    from lifecycle.exports import export_run

    settings.VAR_DIR = tmp_path / "var"
    set_policy(owner, export_policy(formats=["onnx", "tfjs"]))
    version = registered(
        builders.keras_model_to_savedmodel_zip(models["dense"], tmp_path / "sm", top_dir="m")
    )
    assert version.format == "savedmodel"

    for fmt in ("onnx", "tfjs"):
        export = export_run(Export.objects.create(version=version, format=fmt).pk)
        assert export.status == "passed", export.error
        assert export.parity["reference"].startswith("tensorflow 2.19.0 (SavedModel)")
        assert export.parity["max_abs_diff"] <= export.parity["atol"]


# Plain django_db: the test's transaction is rolled back, so nothing is ever sent to a broker.
@pytest.mark.django_db
def test_starting_and_running_the_exports_twice_does_nothing_the_second_time(
    fraud_model, owner, registered, models, django_capture_on_commit_callbacks
):
    from lifecycle.exports import export_run

    set_policy(owner, export_policy(formats=["onnx", "tfjs"]))
    version = registered(models["onnx"])

    with django_capture_on_commit_callbacks(execute=False) as sent:
        exports_start(version.pk)
    with django_capture_on_commit_callbacks(execute=False) as sent_again:
        exports_start(version.pk)
    onnx_export = Export.objects.get(version=version, format="onnx")
    first = export_run(onnx_export.pk)
    events = Event.objects.count()

    assert (len(sent), len(sent_again)) == (1, 0)  # one group, sent once
    assert Export.objects.filter(version=version).count() == 2
    assert first.status == "passed"
    assert export_run(onnx_export.pk) is None
    assert exports_complete(version.pk) is False
    assert Event.objects.count() == events
    assert Event.objects.filter(version=version, kind="exports.completed").count() == 1


@pytest.mark.django_db
def test_the_reconciler_sends_a_lost_export_again_once_per_grace_time(
    fraud_model, owner, registered, models, settings, django_capture_on_commit_callbacks
):
    import datetime as dt

    from django.utils import timezone

    set_policy(owner, export_policy(formats=["onnx"]))
    version = registered(models["onnx"])
    with django_capture_on_commit_callbacks(execute=False):
        exports_start(version.pk)  # its message is "lost": never sent
    export = Export.objects.get(version=version)
    later = timezone.now() + dt.timedelta(seconds=settings.MODELGATE_RECONCILE_GRACE_SECONDS + 1)

    assert exports_stuck() == []  # within the grace time: it may still be on its way
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert exports_reconcile(later) == [export.pk]
    assert len(sent) == 1  # one group holding the lost export
    assert exports_reconcile(later + dt.timedelta(seconds=1)) == []  # just sent again: wait
    much_later = later + dt.timedelta(seconds=settings.MODELGATE_RECONCILE_GRACE_SECONDS + 2)
    assert exports_stuck(much_later) == [export.pk]


# --- the CLI -------------------------------------------------------------------------------------------


def test_push_wait_prints_each_export_state_as_it_changes(tmp_path):
    import httpx
    from click.testing import CliRunner

    from modelgate_client.cli import Settings, cli
    from tests.client.test_cli_offline import URL, FakeTime, version_json, waiting_server

    running = {"format": "onnx", "status": "running", "required": True}
    passed = {
        **running,
        "status": "passed",
        "size": 2048,
        "runtime": "onnxruntime 1.32.0",
        "parity": {"max_abs_diff": 3e-08, "atol": 0.0001, "samples": 32},
    }
    failed = {"format": "tflite", "status": "failed", "error": "TFLite converter: 'tf.ResizeBicubic' op …"}
    handler, _ = waiting_server(
        [
            version_json(status="registered"),
            version_json(status="shadowing", exports=[running, {"format": "tflite", "status": "pending"}]),
            version_json(status="shadowing", exports=[running, {"format": "tflite", "status": "pending"}]),
            version_json(status="awaiting_approval", exports=[passed, failed]),
        ]
    )
    artifact = tmp_path / "model.keras"
    artifact.write_bytes(b"keras")
    clock = FakeTime()
    settings = Settings(
        url=URL,
        token="t",
        transport=httpx.MockTransport(handler),
        backoff=0,
        sleep=clock.sleep,
        clock=clock.clock,
    )

    result = CliRunner().invoke(cli, ["push", str(artifact), "-m", "fraud", "--wait"], obj=settings)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("export onnx (required): running") == 1  # printed on change only
    assert "export tflite: pending" in out
    assert (
        "export onnx (required): passed — max |diff| 3e-08 ≤ atol 0.0001 in onnxruntime 1.32.0, 2.0 kB" in out
    )
    assert "export tflite: failed — TFLite converter: 'tf.ResizeBicubic' op …" in out

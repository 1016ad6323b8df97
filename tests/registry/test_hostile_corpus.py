"""The hostile-input corpus in one place: every file and document an attacker (or a broken CI job) might
send, pushed through the real API. Each must be refused with a 4xx whose JSON message says why, and
leave no version row and no file in the artifact store behind. Every input is built at test time.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from registry.models import Alias, Dataset, ModelVersion
from tests import builders
from tests.conftest import push
from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- artifacts --------------------------------------------------------------------------------------


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    return path


def _truncated_keras(tmp_path: Path) -> Path:
    """A .keras zip (hand-made config, no TensorFlow) cut in half."""
    whole = builders.keras_config_zip(tmp_path, {"class_name": "Sequential", "config": {"layers": []}})
    path = tmp_path / "truncated.keras"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _png_named_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    return path


def _plain_tar_named_onnx(tmp_path: Path) -> Path:
    """An uncompressed tar (not a SavedModel tar.gz) behind an .onnx name."""
    buffer = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("saved_model.pb")
        info.size = 2
        tf.addfile(info, io.BytesIO(builders.SAVEDMODEL_PB_PLACEHOLDER))
    path = tmp_path / "model.onnx"
    path.write_bytes(buffer.getvalue())
    return path


def _truncated_onnx_named_keras(tmp_path: Path) -> Path:
    """The extension says Keras, the bytes are (broken) ONNX: the content decides, and refuses."""
    source = builders.corrupt_onnx(tmp_path)
    path = tmp_path / "model.keras"
    path.write_bytes(source.read_bytes())
    return path


def _hostile_keras_named_onnx(tmp_path: Path) -> Path:
    """A Keras archive carrying a Lambda layer, named .onnx: detection by content still finds the code."""
    layers = [{"class_name": "Lambda", "config": {"name": "sneaky"}}]
    return builders.keras_config_zip(
        tmp_path, {"class_name": "Sequential", "config": {"layers": layers}}, name="model.onnx"
    )


@dataclass(frozen=True)
class Artifact:
    build: Callable[[Path], Path]
    code: str
    says: str  # a substring of the message that tells the user why
    status: int = 400


ARTIFACTS: dict[str, Artifact] = {
    "empty_file": Artifact(_empty, "invalid", "empty"),
    "truncated_keras": Artifact(_truncated_keras, "corrupt_archive", "zip"),
    "truncated_onnx": Artifact(builders.corrupt_onnx, "corrupt_onnx", "ONNX"),
    "zip_bomb_ratio": Artifact(builders.zip_bomb, "archive_bomb", "over the 200x limit"),
    "zip_bomb_declared_size": Artifact(
        builders.size_bomb_zip, "archive_bomb", "unpacks to more than 8.0 GiB"
    ),
    "tar_gz_bomb": Artifact(builders.tar_bomb, "archive_bomb", "200x"),
    "zip_slip_dotdot_zip": Artifact(builders.zip_slip_savedmodel, "zip_slip", "'..'"),
    "zip_slip_dotdot_tar_gz": Artifact(builders.zip_slip_savedmodel_tar, "zip_slip", "'..'"),
    "zip_slip_absolute_zip": Artifact(builders.absolute_path_savedmodel_zip, "zip_slip", "absolute path"),
    "zip_slip_absolute_tar_gz": Artifact(builders.absolute_path_savedmodel_tar, "zip_slip", "absolute path"),
    "zip_slip_backslash_zip": Artifact(builders.backslash_savedmodel_zip, "zip_slip", "backslash"),
    "symlink_tar_gz": Artifact(builders.symlink_savedmodel_tar, "symlink", "link"),
    "hardlink_tar_gz": Artifact(builders.hardlink_savedmodel_tar, "symlink", "link"),
    "symlink_zip": Artifact(builders.symlink_zip, "symlink", "link"),
    "fifo_tar_gz": Artifact(builders.fifo_savedmodel_tar, "special_file", "variables/pipe"),
    "onnx_external_data": Artifact(
        builders.onnx_with_external_data, "onnx_external_data", "external data file"
    ),
    "onnx_external_data_in_subgraph": Artifact(
        builders.onnx_with_external_data_in_subgraph, "onnx_external_data", "external"
    ),
    "onnx_nested_past_the_limit": Artifact(
        lambda tmp: builders.nested_subgraphs_onnx(tmp, depth=65), "corrupt_onnx", "does not parse"
    ),
    "keras_lambda_layer": Artifact(builders.keras_with_lambda, "keras_lambda", "would run arbitrary code"),
    "keras_lambda_named_onnx": Artifact(_hostile_keras_named_onnx, "keras_lambda", "sneaky"),
    "legacy_h5": Artifact(builders.legacy_h5, "legacy_h5", ".keras"),
    "png_named_onnx": Artifact(_png_named_onnx, "unknown_format", "not a model format"),
    "plain_tar_named_onnx": Artifact(_plain_tar_named_onnx, "unknown_format", "not a model format"),
    "broken_onnx_named_keras": Artifact(_truncated_onnx_named_keras, "corrupt_onnx", "ONNX"),
    "gzip_that_is_no_tar": Artifact(builders.gzip_not_tar, "corrupt_archive", "tar"),
    "csv_named_like_a_model": Artifact(builders.unknown_file, "unknown_format", "model.onnx.csv"),
    "random_bytes": Artifact(builders.random_bytes, "unknown_format", "random.bin"),
}


@pytest.mark.parametrize("case", sorted(ARTIFACTS))
def test_a_hostile_artifact_is_refused_and_leaves_nothing_behind(
    case: str, fraud_model, publisher, tmp_path, artifact_dir
):
    artifact = ARTIFACTS[case]
    path = artifact.build(tmp_path)
    before = stored_files(artifact_dir)

    response = push(publisher.client, "fraud", path)

    assert response.status_code == artifact.status, response.content
    error = response.json()["error"]
    assert error["code"] == artifact.code, error
    assert artifact.says in error["message"], error
    assert error["fields"]["artifact"], error  # the form field to blame, for clients that show errors inline
    assert not ModelVersion.objects.exists()
    assert stored_files(artifact_dir) == before


def test_an_artifact_over_the_size_limit_is_refused_with_413(
    fraud_model, publisher, tmp_path, artifact_dir, settings
):
    settings.MAX_ARTIFACT_BYTES = 16 * 1024
    before = stored_files(artifact_dir)

    response = push(publisher.client, "fraud", builders.random_bytes(tmp_path, size=64 * 1024))

    assert response.status_code == 413, response.content
    assert "larger than the limit of 16384 bytes" in response.json()["error"]["message"]
    assert not ModelVersion.objects.exists()
    assert stored_files(artifact_dir) == before


# --- metadata ---------------------------------------------------------------------------------------

METADATA: dict[str, tuple[str, int, str]] = {
    # case: (the metadata string, status, a substring of the message)
    "not_json": ("{'single': 'quotes'}", 400, "metadata is not valid JSON"),
    "a_json_list": ("[1, 2, 3]", 400, "metadata must be a JSON object"),
    "a_json_string": ('"fraud"', 400, "metadata must be a JSON object"),
    "json_null": ("null", 400, "metadata must be a JSON object"),
    "nested_10000_deep": (nested_list(10_000), 400, "nested too deeply"),
    "nested_10000_deep_in_params": (
        '{"params": {"x": ' + nested_list(10_000) + "}}",
        400,
        "nested too deeply",
    ),
    "nested_33_deep_in_params": ('{"params": {"x": ' + nested_list(32) + "}}", 400, "at most 32 levels"),
    "nested_500_deep_in_params": ('{"params": {"x": ' + nested_list(500) + "}}", 400, "metadata.params.x"),
    "over_the_size_limit": (
        json.dumps({"description": "x" * 1_000_001}),
        400,
        "no more than 1000000 characters",
    ),
    "over_the_request_limit": (
        json.dumps({"params": {"blob": "x" * (3 * 1024**2)}}),
        413,
        "larger than the limit",
    ),
    "metrics_not_numbers": (json.dumps({"metrics": {"auc": "high"}}), 400, "metadata.metrics.auc"),
    "tags_not_a_list": (json.dumps({"tags": "a,b"}), 400, "metadata.tags"),
    "params_not_an_object": (json.dumps({"params": [1, 2]}), 400, "metadata.params"),
    "source_url_not_a_url": (
        json.dumps({"source": {"ci_run_url": "javascript:alert(1)"}}),
        400,
        "ci_run_url",
    ),
    "sha256_not_hex": (json.dumps({"sha256": "z" * 64}), 400, "sha256"),
    "dataset_version_negative": (json.dumps({"datasets": [{"name": "d", "version": -1}]}), 400, "version"),
    "parent_version_a_string": (
        json.dumps({"parents": [{"model": "fraud", "version": "x"}]}),
        400,
        "version",
    ),
    # jsonb stores finite numbers only: these were accepted, then failed on save with a 500.
    "nan_in_params": ('{"params": {"lr": NaN}}', 400, "NaN is not a JSON number"),
    "infinity_in_params": ('{"params": {"lr": -Infinity}}', 400, "Infinity is not a JSON number"),
    "overflowing_float_in_params": ('{"params": {"lr": 1e999}}', 400, "1e999 is out of range"),
    "nul_in_a_key": (json.dumps({"params": {"a\x00b": 1}}), 400, "NUL"),
}


@pytest.mark.parametrize("case", sorted(METADATA))
def test_hostile_metadata_is_refused_and_leaves_nothing_behind(
    case: str, fraud_model, publisher, tmp_path, artifact_dir
):
    metadata, status, says = METADATA[case]
    artifact = builders.tiny_onnx_model(tmp_path)
    before = stored_files(artifact_dir)

    with artifact.open("rb") as fh:
        response = publisher.client.post(
            "/api/v1/models/fraud/versions/", {"artifact": fh, "metadata": metadata}, format="multipart"
        )

    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert says in error["message"] or says in json.dumps(error.get("fields", {})), error
    assert not ModelVersion.objects.exists()
    assert stored_files(artifact_dir) == before


def test_metadata_nested_up_to_the_limit_is_accepted(fraud_model, publisher, tmp_path):
    metadata = {"params": {"x": json.loads(nested_list(30))}}  # 32 levels with the two objects

    response = push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path), metadata)

    assert response.status_code == 201, response.content
    assert response.json()["params"] == metadata["params"]


# --- JSON bodies and datasets -----------------------------------------------------------------------

JSON_BODIES: dict[str, tuple[str, str, bytes, int, str]] = {
    # case: (method, path, body, status, a substring of the message)
    "policy_nested_10000_deep": (
        "put",
        "/api/v1/models/fraud/policy/",
        nested_list(10_000).encode(),
        400,
        "nested",
    ),
    "policy_nested_10000_deep_in_a_field": (
        "put",
        "/api/v1/models/fraud/policy/",
        b'{"gates": ' + nested_list(10_000).encode() + b"}",
        400,
        "nested",
    ),
    "policy_overflowing_float": (
        "put",
        "/api/v1/models/fraud/policy/",
        b'{"gates": [{"kind": "size", "max_mb": 1e999}]}',
        400,
        "out of range",
    ),
    "policy_infinity_literal": (
        "put",
        "/api/v1/models/fraud/policy/",
        b'{"shadow": {"max_days": Infinity}}',
        400,
        "not a JSON number",
    ),
    "predict_nan_inputs": (
        "post",
        "/api/v1/models/fraud/predict/",
        b'{"inputs": [[NaN, 1, 2, 3]]}',
        400,
        "not a JSON number",
    ),
    "policy_a_list": ("put", "/api/v1/models/fraud/policy/", b"[1]", 400, "JSON object"),
    "policy_broken_json": ("put", "/api/v1/models/fraud/policy/", b'{"gates": [', 400, "JSON"),
    "policy_over_the_body_limit": (
        "put",
        "/api/v1/models/fraud/policy/",
        json.dumps({"gates": [{"kind": "loads"}], "pad": "x" * (3 * 1024**2)}).encode(),
        413,
        "larger than the limit",
    ),
    "predict_over_the_body_limit": (
        "post",
        "/api/v1/models/fraud/predict/",
        json.dumps({"inputs": [[0.5] * 4] * 150_000}).encode(),
        413,
        "larger than the limit",
    ),
    "model_create_nested_policy": (
        "post",
        "/api/v1/models/",
        b'{"name": "deep", "policy": ' + nested_list(10_000).encode() + b"}",
        400,
        "nested",
    ),
    "predict_nested_10000_deep": (
        "post",
        "/api/v1/models/fraud/predict/",
        b'{"inputs": ' + nested_list(10_000).encode() + b"}",
        400,
        "nested",
    ),
    "webhook_nested_events": (
        "post",
        "/api/v1/models/fraud/webhooks/",
        b'{"url": "https://example.com/h", "events": ' + nested_list(10_000).encode() + b"}",
        400,
        "nested",
    ),
}


@pytest.mark.parametrize("case", sorted(JSON_BODIES))
def test_a_hostile_json_body_gets_a_4xx_that_says_why(case: str, fraud_model, owner):
    method, path, body, status, says = JSON_BODIES[case]
    if "/predict/" in path:  # predict reads its body only once there is a champion to serve
        champion = ModelVersionFactory(model=fraud_model, version=1, status="production")
        Alias.objects.create(model=fraud_model, name="champion", version=champion)
    policy_before = fraud_model.policy

    response = getattr(owner.client, method)(path, body, content_type="application/json")

    assert response.status_code == status, response.content
    assert says in response.json()["error"]["message"], response.json()
    fraud_model.refresh_from_db()
    assert fraud_model.policy == policy_before


def _parquet_cut(tmp_path: Path) -> Path:
    import pandas as pd

    whole = tmp_path / "whole.parquet"
    pd.DataFrame({"x": np.arange(1000.0), "y": np.arange(1000) % 2}).to_parquet(whole)
    data = whole.read_bytes()
    path = tmp_path / "cut.parquet"
    path.write_bytes(data[: len(data) // 2] + b"PAR1")  # keeps the magic at both ends
    return path


def _csv_ragged(tmp_path: Path) -> Path:
    path = tmp_path / "ragged.csv"
    path.write_text('a,b\n1,2\n3,4,5,6\n"unclosed,7\n')
    return path


def _csv_empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.csv"
    path.write_text("\n\n")
    return path


def _npz_with_pickle(tmp_path: Path) -> Path:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    return path


DATASETS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "parquet_cut_in_half": (_parquet_cut, "Parquet"),
    "csv_ragged": (_csv_ragged, "CSV"),
    "csv_empty": (_csv_empty, "CSV"),
    "npz_with_pickled_objects": (_npz_with_pickle, "Python objects"),
    "random_bytes": (lambda tmp: builders.random_bytes(tmp, size=4096), "neither CSV, Parquet nor NPZ"),
}


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_a_malformed_dataset_is_refused_and_leaves_nothing_behind(case: str, owner, tmp_path, artifact_dir):
    build, says = DATASETS[case]
    path = build(tmp_path)
    before = stored_files(artifact_dir)

    with path.open("rb") as fh:
        response = owner.client.post("/api/v1/datasets/", {"file": fh, "name": "holdout"}, format="multipart")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "bad_dataset", error
    assert says in error["message"], error
    assert not Dataset.objects.exists()
    assert stored_files(artifact_dir) == before

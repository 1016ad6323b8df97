"""Pushing versions: numbering under concurrency, idempotent retries, checksums, size limits, refusals."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from registry.models import Event, ModelVersion
from registry.storage import blob_key
from tests import builders
from tests.conftest import push

pytestmark = pytest.mark.django_db


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fifty_concurrent_pushes_get_versions_one_to_fifty(
    live_server, fraud_model, publisher, tmp_path, artifact_dir
):
    artifacts = [builders.tiny_onnx_model(tmp_path / str(i), seed=i) for i in range(50)]

    def one(path: Path) -> requests.Response:
        with path.open("rb") as fh:
            return requests.post(
                f"{live_server.url}/api/v1/models/fraud/versions/",
                headers={"Authorization": f"Bearer {publisher.token}"},
                files={"artifact": (path.name, fh)},
                data={"metadata": json.dumps({"sha256": sha256_of(path)})},
                timeout=120,
            )

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(one, artifacts))

    assert [r.status_code for r in responses] == [201] * 50, [
        r.text for r in responses if r.status_code != 201
    ]
    numbers = sorted(r.json()["version"] for r in responses)
    assert numbers == list(range(1, 51))
    # No artifact was lost or swapped: each version holds exactly the bytes that were pushed for it.
    by_sha = {sha256_of(p): p for p in artifacts}
    for version in ModelVersion.objects.filter(model=fraud_model):
        assert version.sha256 in by_sha
        assert sha256_of(artifact_dir / version.artifact_key) == version.sha256
    assert len({v.sha256 for v in ModelVersion.objects.filter(model=fraud_model)}) == 50


def test_a_retried_push_with_the_same_idempotency_key_returns_the_same_version(
    fraud_model, publisher, tmp_path
):
    artifact = builders.tiny_onnx_model(tmp_path)
    first = push(publisher.client, "fraud", artifact, {"tags": ["nightly"]}, idempotency_key="run-42")
    again = push(publisher.client, "fraud", artifact, {"tags": ["nightly"]}, idempotency_key="run-42")

    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["version"] == first.json()["version"] == 1
    assert again.headers["Idempotent-Replayed"] == "true"
    assert ModelVersion.objects.filter(model=fraud_model).count() == 1
    assert Event.objects.filter(kind="version.registered").count() == 1


def test_concurrent_retries_of_one_idempotency_key_make_one_version(
    live_server, fraud_model, publisher, tmp_path
):
    artifact = builders.tiny_onnx_model(tmp_path)

    def one(_: int) -> requests.Response:
        with artifact.open("rb") as fh:
            return requests.post(
                f"{live_server.url}/api/v1/models/fraud/versions/",
                headers={"Authorization": f"Bearer {publisher.token}", "Idempotency-Key": "same-key"},
                files={"artifact": ("m.onnx", fh)},
                timeout=60,
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(one, range(8)))
    assert {r.status_code for r in responses} == {201}
    assert {r.json()["version"] for r in responses} == {1}
    assert ModelVersion.objects.filter(model=fraud_model).count() == 1


def test_reusing_an_idempotency_key_for_other_bytes_is_a_conflict(fraud_model, publisher, tmp_path):
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "a", seed=1), idempotency_key="k")
    response = push(
        publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "b", seed=2), idempotency_key="k"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert ModelVersion.objects.count() == 1


def test_a_checksum_mismatch_is_refused_and_leaves_nothing_behind(
    fraud_model, publisher, tmp_path, artifact_dir
):
    before = stored_files(artifact_dir)
    response = push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path), {"sha256": "0" * 64})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "checksum_mismatch"
    assert "sha256 mismatch" in response.json()["error"]["message"]
    assert ModelVersion.objects.count() == 0
    assert stored_files(artifact_dir) == before


def test_an_oversize_upload_gets_413_and_leaves_nothing_behind(
    fraud_model, publisher, tmp_path, settings, artifact_dir
):
    settings.MAX_ARTIFACT_BYTES = 64 * 1024
    before = stored_files(artifact_dir)
    big = builders.tiny_onnx_model(tmp_path, n_features=256, n_outputs=128)
    assert big.stat().st_size > settings.MAX_ARTIFACT_BYTES

    response = push(publisher.client, "fraud", big)

    assert response.status_code == 413
    assert "larger than the limit" in response.json()["error"]["message"]
    assert ModelVersion.objects.count() == 0
    assert stored_files(artifact_dir) == before


def test_an_oversize_upload_over_http_gets_413(live_server, fraud_model, publisher, tmp_path, settings):
    settings.MAX_ARTIFACT_BYTES = 64 * 1024
    big = builders.tiny_onnx_model(tmp_path, n_features=256, n_outputs=128)
    with big.open("rb") as fh:
        response = requests.post(
            f"{live_server.url}/api/v1/models/fraud/versions/",
            headers={"Authorization": f"Bearer {publisher.token}"},
            files={"artifact": ("big.onnx", fh)},
            timeout=60,
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


# Hostile artifacts and metadata: tests/registry/test_hostile_corpus.py.


def test_a_push_without_an_artifact_names_the_field(fraud_model, publisher):
    response = publisher.client.post("/api/v1/models/fraud/versions/", {"metadata": "{}"}, format="multipart")
    assert response.status_code == 400
    assert "artifact" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ("not json", "metadata"),
        ("[1, 2]", "metadata"),
        (
            json.dumps({"datasets": [{"name": "nope", "version": 1, "role": "validation"}]}),
            "metadata.datasets",
        ),
        (json.dumps({"parents": [{"model": "fraud", "version": 99}]}), "metadata.parents"),
        (json.dumps({"metrics": {"auc": "high"}}), "metadata.metrics.auc"),
        (json.dumps({"datasets": [{"name": "x", "role": "cooking"}]}), "metadata.datasets.0.role"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(fraud_model, publisher, tmp_path, metadata, field):
    with builders.tiny_onnx_model(tmp_path).open("rb") as fh:
        response = publisher.client.post(
            "/api/v1/models/fraud/versions/", {"artifact": fh, "metadata": metadata}, format="multipart"
        )
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert ModelVersion.objects.count() == 0


def test_the_same_bytes_are_stored_once(fraud_model, publisher, tmp_path, artifact_dir):
    artifact = builders.tiny_onnx_model(tmp_path)
    first = push(publisher.client, "fraud", artifact)
    second = push(publisher.client, "fraud", artifact)
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    keys = set(ModelVersion.objects.values_list("artifact_key", flat=True))
    assert keys == {blob_key(sha256_of(artifact))}


def test_download_streams_the_bytes_with_their_checksum_and_counts_usage(
    fraud_model, publisher, viewer, tmp_path
):
    artifact = builders.tiny_onnx_model(tmp_path)
    push(publisher.client, "fraud", artifact)

    response = viewer.client.get("/api/v1/models/fraud/versions/1/artifact/")

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body == artifact.read_bytes()
    assert response["X-Checksum-Sha256"] == sha256_of(artifact)
    assert ModelVersion.objects.get().usage.get().downloads == 1

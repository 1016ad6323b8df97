"""Direct uploads: large artifacts go from the client straight to S3 (moto's real server) by presigned
multipart upload; the web process hands out URLs, then verifies and registers what S3 assembled."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import httpx
import pytest
from django.utils import timezone

from registry.direct_uploads import direct_uploads_expire
from registry.models import DirectUpload, Event, ModelRole, ModelVersion, RegisteredModel, Role
from registry.storage import blob_key
from tests import builders
from tests.conftest import ROOT, push

MiB = 1024**2


@pytest.fixture
def s3_store(s3_server, settings, monkeypatch):
    """An S3 artifact store on moto's server: a bucket of this test's own, 5 MiB parts."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    settings.AWS_ENDPOINT_URL = s3_server
    settings.ARTIFACT_STORE = f"s3://{bucket}/registry"
    settings.DIRECT_UPLOAD_PART_BYTES = 5 * MiB
    return s3, bucket


def keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def multipart_uploads(s3, bucket: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start(actor, path: Path, *, model: str = "fraud", sha256: str | None = None, size: int | None = None):
    body = {"filename": path.name, "size": size or path.stat().st_size, "sha256": sha256 or sha256_of(path)}
    return actor.client.post(f"/api/v1/models/{model}/uploads/", body, format="json")


def put_parts(started: dict, path: Path) -> list[dict]:
    """What the client does: PUT each part to its presigned URL, straight to S3."""
    parts = []
    with path.open("rb") as f:
        for part in started["parts"]:
            f.seek((part["part_number"] - 1) * started["part_size"])
            response = httpx.put(part["url"], content=f.read(part["size"]))
            assert response.status_code == 200, response.text
            parts.append({"part_number": part["part_number"], "etag": response.headers["ETag"]})
    return parts


def complete(
    actor, started: dict, parts: list[dict], metadata: dict | None = None, model: str = "fraud", **headers
):
    return actor.client.post(
        f"/api/v1/models/{model}/uploads/{started['id']}/complete/",
        {"parts": parts, "metadata": metadata or {}},
        format="json",
        **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()},
    )


def upload(actor, path: Path, metadata: dict | None = None, **headers):
    started = start(actor, path)
    assert started.status_code == 201, started.content
    return complete(actor, started.json(), put_parts(started.json(), path), metadata, **headers)


# --- the direct path ------------------------------------------------------------------------------


def test_a_direct_upload_registers_the_version_at_its_content_address_like_a_push(
    s3_store, s3_server, fraud_model, publisher, viewer, tmp_path
):
    s3, bucket = s3_store
    artifact = builders.large_onnx_model(tmp_path, raw_mib=6)  # two parts: 5 MiB and the rest
    size = artifact.stat().st_size

    start_body = {"filename": artifact.name, "size": size, "sha256": sha256_of(artifact)}
    started = publisher.client.post("/api/v1/models/fraud/uploads/", start_body, format="json")
    assert started.status_code == 201, started.content
    plan = started.json()
    assert plan["part_size"] == 5 * MiB
    assert [p["part_number"] for p in plan["parts"]] == [1, 2]
    assert sum(p["size"] for p in plan["parts"]) == size
    # The parts go to S3 itself, not to the web process: only small JSON documents reach Django.
    assert all(p["url"].startswith(f"{s3_server}/{bucket}/registry/uploads/") for p in plan["parts"])
    parts = put_parts(plan, artifact)
    complete_body = {"parts": parts, "metadata": {"tags": ["big"], "params": {"lr": 0.1}}}
    assert len(json.dumps(start_body)) + len(json.dumps(complete_body)) < 2_000 < size

    done = publisher.client.post(
        f"/api/v1/models/fraud/uploads/{plan['id']}/complete/", complete_body, format="json"
    )

    assert done.status_code == 201, done.content
    version = done.json()
    assert version["version"] == 1
    assert version["status"] == "registered"
    assert version["format"] == "onnx"
    assert version["size"] == size
    assert version["sha256"] == sha256_of(artifact)
    assert version["tags"] == ["big"] and version["params"] == {"lr": 0.1}
    assert keys(s3, bucket) == [f"registry/{blob_key(version['sha256'])}"]  # the staging object is gone
    assert multipart_uploads(s3, bucket) == []
    recorded = DirectUpload.objects.get()
    assert (recorded.state, recorded.version.version) == ("completed", 1)
    download = viewer.client.get("/api/v1/models/fraud/versions/1/artifact/")
    assert download["X-Checksum-Sha256"] == version["sha256"]

    # The same events as a multipart push of another artifact.
    pushed = push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))
    assert pushed.status_code == 201, pushed.content

    def kinds(number: int) -> list[str]:
        return list(
            Event.objects.filter(version__version=number).order_by("id").values_list("kind", flat=True)
        )

    assert kinds(1) == kinds(2) == ["version.registered"]


def test_a_sha256_mismatch_is_refused_and_leaves_nothing_behind(s3_store, fraud_model, publisher, tmp_path):
    s3, bucket = s3_store
    artifact = builders.tiny_onnx_model(tmp_path)
    started = start(publisher, artifact, sha256="a" * 64).json()

    response = complete(publisher, started, put_parts(started, artifact))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "checksum_mismatch"
    assert not ModelVersion.objects.exists()
    assert keys(s3, bucket) == [] and multipart_uploads(s3, bucket) == []
    assert DirectUpload.objects.get().state == "failed"


def test_a_hostile_artifact_is_refused_with_the_same_answer_as_a_push(
    s3_store, fraud_model, publisher, tmp_path
):
    s3, bucket = s3_store
    hostile = builders.zip_slip_savedmodel(tmp_path)
    pushed = push(publisher.client, "fraud", hostile)
    assert pushed.status_code == 400

    response = upload(publisher, hostile)

    assert response.status_code == 400
    assert response.json() == pushed.json()
    assert not ModelVersion.objects.exists()
    assert keys(s3, bucket) == [] and multipart_uploads(s3, bucket) == []


def test_a_size_other_than_the_declared_one_is_refused(s3_store, fraud_model, publisher, tmp_path):
    s3, bucket = s3_store
    artifact = builders.tiny_onnx_model(tmp_path)
    started = start(publisher, artifact, size=artifact.stat().st_size + 1).json()
    with artifact.open("rb") as f:
        sent = httpx.put(started["parts"][0]["url"], content=f.read())

    response = complete(publisher, started, [{"part_number": 1, "etag": sent.headers["ETag"]}])

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "size_mismatch"
    assert keys(s3, bucket) == [] and not ModelVersion.objects.exists()


def test_an_artifact_over_the_limit_is_refused_at_the_start(
    s3_store, settings, fraud_model, publisher, tmp_path
):
    s3, bucket = s3_store
    settings.MAX_ARTIFACT_BYTES = 1000

    response = start(publisher, builders.tiny_onnx_model(tmp_path), size=1001)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert not DirectUpload.objects.exists() and multipart_uploads(s3, bucket) == []


def test_a_filesystem_store_answers_that_direct_uploads_need_s3(fraud_model, publisher, tmp_path):
    response = start(publisher, builders.tiny_onnx_model(tmp_path))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "direct_upload_unavailable"
    assert "S3" in response.json()["error"]["message"]
    assert not DirectUpload.objects.exists()


def test_only_publishers_start_direct_uploads(s3_store, fraud_model, viewer, outsider, tmp_path):
    artifact = builders.tiny_onnx_model(tmp_path)
    assert start(viewer, artifact).status_code == 403
    assert start(outsider, artifact).status_code == 403
    assert not DirectUpload.objects.exists()


def test_bad_start_documents_are_a_json_400(s3_store, fraud_model, publisher):
    for body in (
        {},
        {"filename": "m.onnx", "size": 0, "sha256": "a" * 64},
        {"filename": "m", "size": 1, "sha256": "x"},
    ):
        response = publisher.client.post("/api/v1/models/fraud/uploads/", body, format="json")
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "invalid"
    assert not DirectUpload.objects.exists()


# --- completing and aborting ----------------------------------------------------------------------


def test_completing_twice_an_unknown_id_or_another_models_id_is_a_clear_4xx(
    s3_store, fraud_model, owner, publisher, tmp_path
):
    artifact = builders.tiny_onnx_model(tmp_path)
    started = start(publisher, artifact).json()
    parts = put_parts(started, artifact)
    owner.client.post("/api/v1/models/", {"name": "churn"}, format="json")
    ModelRole.objects.create(
        model=RegisteredModel.objects.get(name="churn"), user=publisher.user, role=Role.PUBLISHER
    )

    elsewhere = complete(publisher, started, parts, model="churn")
    assert elsewhere.status_code == 404
    unknown = complete(publisher, {**started, "id": str(uuid.uuid4())}, parts)
    assert unknown.status_code == 404
    assert complete(owner, started, parts).status_code == 404  # another user's upload
    first = complete(publisher, started, parts, **{"Idempotency-Key": "ci-run-7"})
    assert first.status_code == 201, first.content

    again = complete(publisher, started, parts)
    replay = complete(publisher, started, parts, **{"Idempotency-Key": "ci-run-7"})

    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "upload_completed",
        "message": "this upload was already completed as version 1",
    }
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert replay.json()["version"] == 1
    assert ModelVersion.objects.count() == 1


def test_a_wrong_list_of_parts_leaves_the_upload_pending(s3_store, fraud_model, publisher, tmp_path):
    artifact = builders.tiny_onnx_model(tmp_path)
    started = start(publisher, artifact).json()
    parts = put_parts(started, artifact)

    missing = complete(publisher, started, [{"part_number": 2, "etag": parts[0]["etag"]}])
    wrong_etag = complete(publisher, started, [{"part_number": 1, "etag": '"0123"'}])

    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "bad_parts")
    assert (wrong_etag.status_code, wrong_etag.json()["error"]["code"]) == (400, "bad_parts")
    assert DirectUpload.objects.get().state == "pending"
    assert complete(publisher, started, parts).status_code == 201


def test_an_aborted_upload_drops_its_parts_and_cannot_be_completed(
    s3_store, fraud_model, publisher, tmp_path
):
    s3, bucket = s3_store
    artifact = builders.tiny_onnx_model(tmp_path)
    started = start(publisher, artifact).json()
    parts = put_parts(started, artifact)

    aborted = publisher.client.delete(f"/api/v1/models/fraud/uploads/{started['id']}/")

    assert aborted.status_code == 204
    assert multipart_uploads(s3, bucket) == [] and keys(s3, bucket) == []
    late = complete(publisher, started, parts)
    assert (late.status_code, late.json()["error"]["code"]) == (409, "upload_aborted")
    assert publisher.client.delete(f"/api/v1/models/fraud/uploads/{started['id']}/").status_code == 409


def test_the_sweep_aborts_uploads_left_pending_and_runs_once(s3_store, fraud_model, publisher, tmp_path):
    s3, bucket = s3_store
    artifact = builders.tiny_onnx_model(tmp_path)
    put_parts(start(publisher, artifact).json(), artifact)
    assert start(publisher, artifact).status_code == 201
    later = timezone.now() + dt.timedelta(days=2)

    assert direct_uploads_expire(now=timezone.now()) == 0
    assert direct_uploads_expire(now=later) == 2
    assert direct_uploads_expire(now=later) == 0
    assert multipart_uploads(s3, bucket) == []
    assert set(DirectUpload.objects.values_list("state", flat=True)) == {"aborted"}


# --- the client and the CLI -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_client_goes_direct_above_its_threshold_with_progress(
    live_server, s3_store, fraud_model, publisher, tmp_path
):
    from modelgate_client import Client

    artifact = builders.large_onnx_model(tmp_path, raw_mib=6)
    seen: list[int] = []
    with Client(live_server.url, publisher.token, direct_upload_bytes=MiB) as client:
        version = client.push("fraud", artifact, {"tags": ["direct"]}, progress=seen.append)

    assert version["version"] == 1 and version["tags"] == ["direct"]
    assert DirectUpload.objects.get().version_id == ModelVersion.objects.get().pk
    assert seen[-1] == artifact.stat().st_size and seen == sorted(seen)


@pytest.mark.django_db(transaction=True)
def test_the_client_falls_back_to_a_multipart_push_on_a_filesystem_store(
    live_server, fraud_model, publisher, tmp_path
):
    from modelgate_client import Client

    with Client(live_server.url, publisher.token, direct_upload_bytes=1) as client:
        version = client.push("fraud", builders.tiny_onnx_model(tmp_path), {})

    assert version["version"] == 1
    assert not DirectUpload.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_cli_pushes_above_the_threshold_straight_to_s3(
    live_server, s3_store, fraud_model, publisher, tmp_path
):
    artifact = builders.tiny_onnx_model(tmp_path)
    env = {
        **os.environ,
        "MODELGATE_URL": live_server.url,
        "MODELGATE_TOKEN": publisher.token,
        "MODELGATE_DIRECT_UPLOAD_BYTES": "1",
        "NO_COLOR": "1",
    }

    result = subprocess.run(
        [sys.executable, "-m", "modelgate_client", "push", str(artifact), "--model", "fraud"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "pushed fraud v1" in result.stdout
    upload = DirectUpload.objects.get()
    assert (upload.state, upload.version.version) == ("completed", 1)

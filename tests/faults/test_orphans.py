"""Orphan blobs: a push cut off between storing its bytes and committing its version leaves a blob no
record names; the orphan sweep deletes it once past the grace period, and never a referenced blob."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import boto3
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from lifecycle.orphans import orphans_sweep
from registry.models import Event, ModelVersion
from registry.storage import blob_key, blob_list
from tests import builders
from tests.conftest import push

pytestmark = pytest.mark.django_db(transaction=True)

LATER = timezone.now() + dt.timedelta(hours=25)  # past the default grace of 24 hours


def stored(artifact_dir) -> set[str]:
    return {p.relative_to(artifact_dir).as_posix() for p in artifact_dir.rglob("*") if p.is_file()}


@pytest.fixture
def artifact_dir(settings, tmp_path):
    """A store of this test's own: the sweep would otherwise collect the rest of the session's blobs."""
    settings.ARTIFACT_STORE = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    return tmp_path / "store"


def test_a_push_cut_off_before_its_commit_leaves_an_orphan_the_sweep_deletes_after_the_grace(
    fraud_model, publisher, tmp_path, artifact_dir, monkeypatch
):
    kept = push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "kept"))
    assert kept.status_code == 201
    kept_key = ModelVersion.objects.get(model=fraud_model, version=1).artifact_key

    def database_lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("registry.services.event_record", database_lost)
    artifact = builders.tiny_onnx_model(tmp_path / "lost", seed=7)
    lost = push(publisher.client, "fraud", artifact)
    monkeypatch.undo()
    lost_key = blob_key(hashlib.sha256(artifact.read_bytes()).hexdigest())

    assert lost.status_code == 503 and lost.json()["error"]["code"] == "database_unavailable"
    assert ModelVersion.objects.filter(model=fraud_model).count() == 1  # the version was rolled back
    assert lost_key in stored(artifact_dir)  # but its bytes were stored first

    young = orphans_sweep()  # within the grace: a push may be between its store write and its commit
    assert young.orphans == [] and lost_key in stored(artifact_dir)

    with CaptureQueriesContext(connection) as queries:
        swept = orphans_sweep(now=LATER)

    assert lost_key in swept.orphans and kept_key not in swept.orphans
    assert lost_key not in stored(artifact_dir) and kept_key in stored(artifact_dir)
    assert len(queries) <= 4  # the three kinds of referenced keys, and the event
    event = Event.objects.get(kind="store.orphans_deleted")
    assert lost_key in event.data["keys"] and event.actor == "system:orphans"
    assert orphans_sweep(now=LATER).orphans == []  # a second sweep finds nothing


def test_a_killed_writers_part_file_is_swept_and_the_dry_run_deletes_nothing(artifact_dir):
    part = artifact_dir / "exports" / "sha256" / "ab" / "cd" / ("ab" * 32 + ".3f2a.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"half a conversion")
    old = (timezone.now() - dt.timedelta(days=2)).timestamp()
    os.utime(part, (old, old))
    name = part.relative_to(artifact_dir).as_posix()

    dry = orphans_sweep(dry_run=True)
    assert name in dry.orphans and part.exists()
    assert not Event.objects.filter(kind="store.orphans_deleted").exists()

    assert name in orphans_sweep().orphans
    assert not part.exists()


def test_the_sweep_lists_and_deletes_through_s3(
    s3_server, settings, monkeypatch, fraud_model, publisher, tmp_path
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="orphans")
    settings.AWS_ENDPOINT_URL = s3_server
    settings.ARTIFACT_STORE = "s3://orphans/registry"
    assert push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path)).status_code == 201
    kept_key = ModelVersion.objects.get(model=fraud_model, version=1).artifact_key
    orphan = blob_key("0" * 64)
    s3.put_object(Bucket="orphans", Key=f"registry/{orphan}", Body=b"nobody's")
    s3.put_object(Bucket="orphans", Key="registry/uploads/staged", Body=b"a direct upload in flight")

    assert {key for key, _ in blob_list("artifacts/")} == {kept_key, orphan}
    swept = orphans_sweep(now=LATER)

    assert swept.orphans == [orphan]
    left = {o["Key"] for o in s3.list_objects_v2(Bucket="orphans")["Contents"]}
    assert left == {f"registry/{kept_key}", "registry/uploads/staged"}

"""The `modelgate` CLI as CI runs it: a subprocess against the live test server and real workers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.make_demo_model import build
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def modelgate(live_server, actor, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELGATE_URL": live_server.url, "MODELGATE_TOKEN": actor.token, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "modelgate_client", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def demo_model(tmp_path: Path, *, broken: bool = False) -> Path:
    import onnx

    path = tmp_path / ("broken.onnx" if broken else "model.onnx")
    onnx.save(build(broken, seed=0), path)
    return path


@pytest.mark.workers
def test_push_wait_exits_0_when_the_version_reaches_its_target(live_server, celery_workers, owner, tmp_path):
    assert modelgate(live_server, owner, "models", "create", "fraud").returncode == 0

    result = modelgate(
        live_server,
        owner,
        "push",
        str(demo_model(tmp_path)),
        "--model",
        "fraud",
        "--git-sha",
        "abc123",
        "--wait",
        "--until",
        "awaiting_approval",
        "--timeout",
        "180",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "awaiting_approval" in result.stdout + result.stderr
    status = modelgate(live_server, owner, "status", "fraud:1")
    assert status.returncode == 0, status.stderr
    assert "awaiting_approval" in status.stdout


@pytest.mark.workers
def test_push_wait_exits_1_and_prints_the_failed_gate_when_rejected(
    live_server, celery_workers, owner, tmp_path
):
    modelgate(live_server, owner, "models", "create", "fraud")

    result = modelgate(
        live_server,
        owner,
        "push",
        str(demo_model(tmp_path, broken=True)),
        "--model",
        "fraud",
        "--wait",
        "--timeout",
        "180",
    )

    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "rejected" in output and "loads" in output
    assert "/artifacts/" not in output  # the reason names the artifact, not the worker's paths


def test_download_verifies_the_checksum(live_server, owner, fraud_model, publisher, tmp_path):
    artifact = demo_model(tmp_path)
    assert modelgate(live_server, publisher, "push", str(artifact), "--model", "fraud").returncode == 0
    target = tmp_path / "downloaded.onnx"

    result = modelgate(live_server, owner, "download", "fraud:1", "-o", str(target))

    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(artifact.read_bytes()).digest()


def test_errors_are_one_line_and_exit_2(live_server, outsider, fraud_model, tmp_path):
    result = modelgate(live_server, outsider, "push", str(demo_model(tmp_path)), "--model", "fraud")
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr

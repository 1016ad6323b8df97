"""Property-based fuzzing of the whole API from its OpenAPI schema: no input may produce a 5xx."""

from __future__ import annotations

import subprocess
import sys

import pytest

from registry.models import ModelRole, RegisteredModel, Role
from tests import builders
from tests.conftest import push

pytestmark = pytest.mark.django_db(transaction=True)


def test_schemathesis_finds_no_server_error(live_server, owner, tmp_path):
    # A model and a version with real data, so that generated requests reach the inner endpoints too.
    owner.client.post("/api/v1/models/", {"name": "fraud"}, format="json")
    ModelRole.objects.get_or_create(
        model=RegisteredModel.objects.get(name="fraud"), user=owner.user, role=Role.OWNER
    )
    push(owner.client, "fraud", builders.tiny_onnx_model(tmp_path))

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{live_server.url}/api/v1/schema/",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {owner.token}",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert " generated, " in output and "failure" not in output.split("Test cases:")[-1]

"""The `modelgate` CLI against a fake server (httpx.MockTransport): no Django, no network.

Run with: .venv/bin/pytest -p no:django --confcutdir=tests/client tests/client/test_cli_offline.py -q
(`--confcutdir` skips tests/conftest.py, which needs Django, PostgreSQL and Redis.)
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from modelgate_client import ApiError, Client
from modelgate_client.cli import Settings, cli

URL = "http://modelgate.test"
Handler = Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """sleep() advances clock() instantly, so polling and backoff cost nothing."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.keras"
    path.write_bytes(b"keras-bytes" * 50_000)  # 550 kB: several multipart chunks
    return path


@pytest.fixture
def run(fake_time: FakeTime) -> Iterator[Callable[..., Result]]:
    def invoke(handler: Handler, *args: str, env: dict[str, str] | None = None) -> Result:
        settings = Settings(
            url=URL,
            token="s3cret",
            transport=httpx.MockTransport(handler),
            backoff=0,
            sleep=fake_time.sleep,
            clock=fake_time.clock,
            env=env or {},
        )
        return CliRunner().invoke(cli, list(args), obj=settings, catch_exceptions=False)

    yield invoke


def version_json(number: int = 3, status: str = "registered", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "fraud",
        "version": number,
        "status": status,
        "status_reason": "",
        "sha256": "ab" * 32,
        "size": 550_000,
        "format": "keras",
        "gates": [],
        "exports": [],
        "shadow": None,
        "approvals": [],
        "aliases": [],
    }
    body.update(extra)
    return body


def gate(
    name: str, passed: bool | None, *, value: float = 0.9, slice: str = "", **extra: Any
) -> dict[str, Any]:
    return {
        "gate": name,
        "metric": "recall",
        "slice": slice,
        "value": value,
        "baseline": 0.86,
        "threshold": 0.8,
        "passed": passed,
        "skipped_reason": None,
        "attempt": 1,
        **extra,
    }


def multipart_fields(request: httpx.Request) -> dict[str, bytes]:
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    fields = {}
    for part in request.content.split(b"--" + boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if sep:
            name = re.search(rb'name="([^"]+)"', head)
            assert name is not None
            fields[name.group(1).decode()] = data.removesuffix(b"\r\n")
    return fields


def error(status: int, message: str, **fields: Any) -> httpx.Response:
    body: dict[str, Any] = {"code": "invalid", "message": message}
    if fields:
        body["fields"] = fields
    return httpx.Response(status, json={"error": body})


# -- push ----------------------------------------------------------------------------------------


def test_push_sends_the_artifact_with_its_sha256_and_prints_the_version(
    run: Callable[..., Result], artifact: Path
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=version_json(3))

    result = run(
        handler,
        "push", str(artifact), "--model", "fraud",
        "--dataset", "holdout:3:validation", "--parent", "fraud:2", "--tag", "nightly",
        "--git-sha", "abc123", "--branch", "main",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"pushed fraud v3 (sha256 {'ab' * 32})"
    (request,) = seen
    assert request.method == "POST"
    assert request.url == f"{URL}/api/v1/models/fraud/versions/"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert uuid.UUID(request.headers["idempotency-key"]).version == 4
    # A Content-Length, not a chunked body: Django cannot read chunked request bodies.
    assert int(request.headers["content-length"]) == len(request.content)
    fields = multipart_fields(request)
    assert fields["artifact"] == artifact.read_bytes()
    metadata = json.loads(fields["metadata"])
    assert metadata["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert metadata["datasets"] == [{"name": "holdout", "version": 3, "role": "validation"}]
    assert metadata["parents"] == [{"model": "fraud", "version": 2, "kind": "fine_tuned_from"}]
    assert metadata["tags"] == ["nightly"]
    assert metadata["source"]["git_sha"] == "abc123"
    assert metadata["source"]["branch"] == "main"


def test_push_fills_the_source_from_github_actions_variables(
    run: Callable[..., Result], artifact: Path, tmp_path: Path
) -> None:
    sent: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        sent.update(json.loads(multipart_fields(request)["metadata"]))
        return httpx.Response(201, json=version_json())

    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps({"metrics": {"auc": 0.93}, "tags": ["a"]}))
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_SHA": "deadbeef",
        "GITHUB_REF_NAME": "main",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/fraud",
        "GITHUB_RUN_ID": "42",
        "GITHUB_ACTOR": "alice",
    }
    result = run(
        handler, "push", str(artifact), "-m", "fraud", "--metadata", str(meta_file), "--tag", "b",
        "--author", "bob", env=env,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent["source"] == {
        "git_sha": "deadbeef",
        "branch": "main",
        "ci_run_url": "https://github.com/acme/fraud/actions/runs/42",
        "author": "bob",  # an explicit flag beats the environment
    }
    assert sent["metrics"] == {"auc": 0.93}
    assert sent["tags"] == ["a", "b"]


def test_push_json_prints_the_version_json(run: Callable[..., Result], artifact: Path) -> None:
    result = run(
        lambda r: httpx.Response(201, json=version_json(7)),
        "push", str(artifact), "-m", "fraud", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == 7


def test_push_retries_reuse_the_same_idempotency_key(run: Callable[..., Result], artifact: Path) -> None:
    keys: list[str] = []
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        bodies.append(request.content)
        if len(keys) == 1:
            return error(503, "restarting")
        if len(keys) == 2:
            raise httpx.ConnectError("connection reset", request=request)
        return httpx.Response(201, json=version_json(4))

    result = run(handler, "push", str(artifact), "-m", "fraud")

    assert result.exit_code == 0, result.output
    assert len(keys) == 3
    assert len(set(keys)) == 1
    # Each attempt sends the whole file again, not the rest of a half-read stream.
    assert all(multipart_fields_of(b) == artifact.read_bytes() for b in bodies)
    assert "pushed fraud v4" in result.stdout


def multipart_fields_of(body: bytes) -> bytes:
    start = body.index(b"\r\n\r\n", body.index(b'name="artifact"')) + 4
    return body[start : body.index(b"\r\n--", start)]


def test_a_named_idempotency_key_becomes_a_stable_uuid(run: Callable[..., Result], artifact: Path) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        return httpx.Response(201, json=version_json())

    for _ in range(2):
        run(handler, "push", str(artifact), "-m", "fraud", "--idempotency-key", "run-42-train")

    assert keys[0] == keys[1]
    assert uuid.UUID(keys[0])


def test_push_gives_up_after_three_retries_with_exit_2(
    run: Callable[..., Result], artifact: Path, fake_time: FakeTime
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["idempotency-key"])
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    result = run(handler, "push", str(artifact), "-m", "fraud")

    assert result.exit_code == 2
    assert len(calls) == 4  # the first attempt and three retries
    assert "error: HTTP 502 Bad Gateway: <html>Bad Gateway</html>" in result.stderr
    assert "Traceback" not in result.output


def test_push_does_not_retry_a_validation_error_and_prints_field_errors(
    run: Callable[..., Result], artifact: Path
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return error(
            400,
            "invalid metadata",
            datasets=[{"name": ["unknown dataset 'holdout'"]}],
            sha256=["does not match the uploaded bytes"],
        )

    result = run(handler, "push", str(artifact), "-m", "fraud", "--dataset", "holdout:3:validation")

    assert result.exit_code == 2
    assert calls == 1
    assert result.stderr.splitlines()[-3:] == [
        "error: invalid metadata",
        "  datasets.0.name: unknown dataset 'holdout'",
        "  sha256: does not match the uploaded bytes",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--dataset", "holdout:validation"],
        ["--dataset", "holdout:three:validation"],
        ["--parent", "fraud"],
    ],
)
def test_malformed_links_are_usage_errors_before_any_request(
    run: Callable[..., Result], artifact: Path, args: list[str]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    result = run(handler, "push", str(artifact), "-m", "fraud", *args)

    assert result.exit_code == 2
    assert "Invalid value" in result.stderr


def test_an_unreachable_server_is_one_line_and_exit_2(run: Callable[..., Result], artifact: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = run(handler, "push", str(artifact), "-m", "fraud")

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach MODELGATE_URL={URL}: [Errno 111] Connection refused"
    )


def test_no_url_configured_is_an_error(artifact: Path) -> None:
    result = CliRunner().invoke(
        cli, ["push", str(artifact), "-m", "fraud"], obj=Settings(env={}), env={"MODELGATE_URL": None}
    )

    assert result.exit_code == 2
    assert "error: no server URL: set MODELGATE_URL or pass --url" in result.stderr


def test_an_unauthorised_token_gets_a_hint(run: Callable[..., Result]) -> None:
    result = run(lambda r: error(401, "invalid token"), "status", "fraud")

    assert result.exit_code == 2
    assert "error: invalid token (check MODELGATE_TOKEN or --token)" in result.stderr


# -- push --wait -----------------------------------------------------------------------------------


def waiting_server(states: list[dict[str, Any]]) -> tuple[Handler, list[str]]:
    """201 for the push, then each GET of the version returns the next state (the last repeats)."""
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            return httpx.Response(201, json=states[0])
        polls = sum(1 for r in requests if r.startswith("GET"))
        return httpx.Response(200, json=states[min(polls, len(states) - 1)])

    return handler, requests


def test_wait_exits_0_when_the_target_state_is_reached(
    run: Callable[..., Result], artifact: Path, fake_time: FakeTime
) -> None:
    handler, requests = waiting_server(
        [
            version_json(status="registered"),
            version_json(status="validating", gates=[gate("metric", True)]),
            version_json(status="validating", gates=[gate("metric", True)]),
            version_json(status="shadowing", gates=[gate("metric", True), gate("size", True)]),
            version_json(status="awaiting_approval"),
        ]
    )

    result = run(handler, "push", str(artifact), "-m", "fraud", "--wait")

    assert result.exit_code == 0, result.output
    out = result.stdout
    for status in ("registered", "validating", "shadowing", "awaiting_approval"):
        assert f"fraud v3: {status}" in out
    assert out.count("fraud v3: validating") == 1  # printed on change only
    assert out.count("│ metric ") == 1  # each gate result is shown once, when it arrives
    assert out.count("│ size ") == 1
    assert out.strip().splitlines()[-1] == "fraud v3 is awaiting_approval"
    assert requests.count("GET /api/v1/models/fraud/versions/3/") == 4
    assert fake_time.sleeps[0] == 1.0
    assert max(fake_time.sleeps) <= 5.0


def test_a_later_forward_state_also_counts_as_reached(run: Callable[..., Result], artifact: Path) -> None:
    handler, _ = waiting_server([version_json(status="registered"), version_json(status="production")])

    result = run(handler, "push", str(artifact), "-m", "fraud", "--until", "shadowing")

    assert result.exit_code == 0, result.output
    assert "fraud v3 is production" in result.stdout


def test_wait_exits_1_and_explains_a_rejection(run: Callable[..., Result], artifact: Path) -> None:
    failed = gate("metric", False, value=0.71, slice="country=FR")
    handler, _ = waiting_server(
        [
            version_json(status="registered"),
            version_json(
                status="rejected",
                status_reason="1 gate failed",
                gates=[gate("metric", True, slice="country=US"), failed],
            ),
        ]
    )

    result = run(handler, "push", str(artifact), "-m", "fraud", "--wait")

    assert result.exit_code == 1, result.output
    assert "fraud v3 was rejected: 1 gate failed" in result.stdout
    assert "✗ metric recall: value 0.71, threshold 0.8, baseline 0.86, slice country=FR" in result.stdout
    assert "FAIL" in result.stdout


def test_wait_times_out_with_exit_2(run: Callable[..., Result], artifact: Path, fake_time: FakeTime) -> None:
    handler, _ = waiting_server([version_json(status="registered"), version_json(status="validating")])

    result = run(handler, "push", str(artifact), "-m", "fraud", "--wait", "--timeout", "30")

    assert result.exit_code == 2
    assert (
        "error: timed out waiting for fraud v3 to reach awaiting_approval (last status: validating)"
        in result.stderr
    )
    assert sum(fake_time.sleeps) == pytest.approx(30)


def test_wait_with_json_keeps_stdout_parseable(run: Callable[..., Result], artifact: Path) -> None:
    handler, _ = waiting_server([version_json(status="registered"), version_json(status="awaiting_approval")])

    result = run(handler, "push", str(artifact), "-m", "fraud", "--wait", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "awaiting_approval"
    assert "pushed fraud v3" in result.stderr


# -- download --------------------------------------------------------------------------------------


def download_server(payload: bytes, header_sha: str | None, record_sha: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/artifact/"):
            headers = {"X-Checksum-Sha256": header_sha} if header_sha else {}
            return httpx.Response(200, content=payload, headers=headers)
        export = {"format": "onnx", "status": "succeeded", "sha256": record_sha, "size": len(payload)}
        return httpx.Response(200, json=version_json(3, sha256=record_sha, exports=[export]))

    return handler


def test_download_streams_to_disk_and_verifies_the_checksum(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    payload = b"model" * 10_000
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "m.keras"

    result = run(download_server(payload, sha, sha), "download", "fraud:3", "-o", str(dest))

    assert result.exit_code == 0, result.output
    assert dest.read_bytes() == payload
    assert f"(sha256 {sha}, verified)" in result.stdout


def test_download_of_an_export_names_the_file_after_its_format(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    payload = b"onnx-bytes"
    sha = hashlib.sha256(payload).hexdigest()
    paths: list[str] = []
    serve = download_server(payload, sha, sha)

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return serve(request)

    result = run(handler, "download", "fraud:3", "--format", "onnx", "-o", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert "/api/v1/models/fraud/versions/3/exports/onnx/artifact/" in paths
    assert (tmp_path / "fraud-v3.onnx").read_bytes() == payload


def test_download_with_a_checksum_mismatch_exits_2_and_leaves_no_file(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    payload = b"corrupted in transit"
    dest = tmp_path / "m.keras"

    result = run(download_server(payload, "0" * 64, "0" * 64), "download", "fraud:3", "-o", str(dest))

    assert result.exit_code == 2
    assert "error: checksum mismatch for m.keras: server said 0000" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_download_without_a_checksum_header_cannot_be_verified(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    payload = b"bytes"
    sha = hashlib.sha256(payload).hexdigest()

    result = run(download_server(payload, None, sha), "download", "fraud:3", "-o", str(tmp_path / "m"))

    assert result.exit_code == 2
    assert "sent no X-Checksum-Sha256 header" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_download_needs_a_version(run: Callable[..., Result]) -> None:
    result = run(lambda r: httpx.Response(500), "download", "fraud")

    assert result.exit_code == 2
    assert "expected NAME:VERSION" in result.stderr


# -- datasets, models, status ----------------------------------------------------------------------


def test_datasets_push_uploads_the_file_with_name_and_version(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    csv = tmp_path / "holdout.csv"
    csv.write_text("x,y\n1,0\n2,1\n")
    seen: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/datasets/"
        seen.update(multipart_fields(request))
        body = {"name": "holdout", "version": 3, "sha256": "cd" * 32, "rows": 2, "size": 14}
        return httpx.Response(201, json=body)

    result = run(handler, "datasets", "push", str(csv), "--name", "holdout", "--version", "3")

    assert result.exit_code == 0, result.output
    assert seen == {"name": b"holdout", "version": b"3", "file": csv.read_bytes()}
    assert result.stdout.splitlines()[-1] == (f"pushed dataset holdout v3 (2 rows, 14 B, sha256 {'cd' * 32})")


def test_models_create_sends_the_policy_file(run: Callable[..., Result], tmp_path: Path) -> None:
    policy = {"gates": [{"kind": "loads"}]}
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    sent: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        sent.update(json.loads(request.content))
        model = {"name": "fraud", "description": "d", "champion": None, "counts": {}, "tags": []}
        return httpx.Response(201, json=model)

    result = run(handler, "models", "create", "fraud", "--description", "d", "--policy", str(policy_file))

    assert result.exit_code == 0, result.output
    assert sent == {"name": "fraud", "description": "d", "policy": policy}
    assert "created model fraud" in result.stdout


def test_models_create_reports_a_conflict(run: Callable[..., Result]) -> None:
    result = run(lambda r: error(409, "model 'fraud' already exists"), "models", "create", "fraud")

    assert result.exit_code == 2
    assert "error: model 'fraud' already exists" in result.stderr


def test_status_of_a_version_shows_its_gates(run: Callable[..., Result]) -> None:
    version = version_json(
        3,
        status="validating",
        gates=[gate("metric", False, value=0.5, slice="country=FR")],
        source={"git_sha": "abc"},
    )
    result = run(lambda r: httpx.Response(200, json=version), "status", "fraud:3")

    assert result.exit_code == 0, result.output
    assert "fraud v3  validating" in result.stdout
    assert "country=FR" in result.stdout
    assert "FAIL" in result.stdout


def test_status_of_a_model_lists_its_latest_versions(run: Callable[..., Result]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/versions/"):
            page = {"next": None, "previous": None, "results": [version_json(2, "production")]}
            return httpx.Response(200, json=page)
        model = {"name": "fraud", "description": "", "champion": 2, "counts": {"production": 1}}
        return httpx.Response(200, json=model)

    result = run(handler, "status", "fraud")

    assert result.exit_code == 0, result.output
    assert "champion: v2" in result.stdout
    assert "production" in result.stdout


# -- the Client itself -----------------------------------------------------------------------------


def test_client_parses_the_error_envelope() -> None:
    client = Client(URL, "t", transport=httpx.MockTransport(lambda r: error(404, "no such model")))

    with pytest.raises(ApiError) as raised:
        client.get_model("nope")

    assert (raised.value.status, raised.value.code, raised.value.message) == (
        404,
        "invalid",
        "no such model",
    )


def test_client_follows_cursor_pages_and_filters_by_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") == "p2":
            return httpx.Response(200, json={"next": None, "results": [{"version": 1}]})
        assert request.url.params["status"] == "rejected"
        next_url = f"{URL}/api/v1/models/fraud/versions/?status=rejected&cursor=p2"
        return httpx.Response(200, json={"next": next_url, "results": [{"version": 2}]})

    client = Client(URL, None, transport=httpx.MockTransport(handler))

    assert [v["version"] for v in client.list_versions("fraud", status="rejected")] == [2, 1]


def test_client_push_reports_cumulative_upload_progress(artifact: Path) -> None:
    progress: list[int] = []
    client = Client(URL, None, transport=httpx.MockTransport(lambda r: httpx.Response(201, json={})))

    client.push("fraud", artifact, {}, progress=progress.append)

    size = artifact.stat().st_size
    assert len(progress) > 2  # streamed in chunks, not read whole
    assert progress == sorted(progress)
    assert progress[-1] == size

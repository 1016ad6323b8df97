"""The client's direct upload against a fake server and a fake S3 (httpx.MockTransport): parts are
streamed to S3 without the registry's token, a part is retried on a transport error, and a failed
upload is aborted.

Run with: .venv/bin/pytest -p no:django --confcutdir=tests/client tests/client/test_direct_upload_offline.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from modelgate_client import ApiError, Client
from modelgate_client.api import parse_size

URL = "http://modelgate.test"
S3 = "http://s3.test/bucket/uploads/u1"


class FakeStore:
    def __init__(self, *, fail_first_put: bool = False, s3_status: int = 200) -> None:
        self.fail_first_put = fail_first_put
        self.s3_status = s3_status
        self.puts: list[tuple[int, bytes, str | None]] = []
        self.completed: dict | None = None
        self.aborted = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "s3.test":
            number = int(request.url.params["partNumber"])
            if self.fail_first_put:
                self.fail_first_put = False
                raise httpx.ConnectError("connection reset", request=request)
            body = request.read()
            self.puts.append((number, body, request.headers.get("Authorization")))
            if self.s3_status != 200:
                return httpx.Response(self.s3_status, text="<Error><Code>AccessDenied</Code></Error>")
            return httpx.Response(200, headers={"ETag": f'"etag-{number}"'})
        path = request.url.path
        if request.method == "POST" and path.endswith("/uploads/"):
            size = json.loads(request.content)["size"]
            part = 4
            parts = [
                {"part_number": n + 1, "size": min(part, size - n * part), "url": f"{S3}?partNumber={n + 1}"}
                for n in range((size + part - 1) // part)
            ]
            return httpx.Response(201, json={"id": "u1", "part_size": part, "parts": parts})
        if request.method == "POST" and path.endswith("/uploads/u1/complete/"):
            self.completed = json.loads(request.content)
            return httpx.Response(201, json={"model": "fraud", "version": 1})
        if request.method == "DELETE" and path.endswith("/uploads/u1/"):
            self.aborted = True
            return httpx.Response(204)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})


def client(store: FakeStore) -> Client:
    return Client(URL, "secret", transport=httpx.MockTransport(store), backoff=0, direct_upload_bytes=1)


def test_parts_go_to_s3_without_the_token_and_a_dropped_part_is_sent_again(tmp_path: Path):
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"0123456789")
    store = FakeStore(fail_first_put=True)
    seen: list[int] = []

    version = client(store).push("fraud", artifact, {"tags": ["x"]}, progress=seen.append)

    assert version == {"model": "fraud", "version": 1}
    assert [(n, body) for n, body, _ in store.puts] == [(1, b"0123"), (2, b"4567"), (3, b"89")]
    assert {auth for _, _, auth in store.puts} == {None}
    assert store.completed is not None
    assert store.completed["parts"] == [{"part_number": n, "etag": f'"etag-{n}"'} for n in (1, 2, 3)]
    assert store.completed["metadata"]["tags"] == ["x"] and len(store.completed["metadata"]["sha256"]) == 64
    assert seen[-1] == 10


def test_a_part_that_s3_refuses_aborts_the_upload(tmp_path: Path):
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"0123456789")
    store = FakeStore(s3_status=403)

    with pytest.raises(ApiError) as error:
        client(store).push("fraud", artifact, {})

    assert error.value.status == 403
    assert store.aborted and store.completed is None


def test_sizes_read_with_binary_suffixes():
    assert [parse_size(t) for t in ("1", "64M", "64MiB", "1g", "2K")] == [
        1,
        64 * 1024**2,
        64 * 1024**2,
        1024**3,
        2048,
    ]
    with pytest.raises(ValueError):
        parse_size("lots")

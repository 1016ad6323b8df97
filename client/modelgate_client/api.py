"""HTTP client for the Modelgate REST API (v1).

One `Client` per server. Every call either returns the decoded JSON resource or raises:

- `ApiError` when the server answered with a 4xx/5xx (parsed from its `{"error": {...}}` body);
- `ServerUnreachable` when no answer came back at all (DNS, refused connection, timeout);
- `ChecksumMismatch` when a download's bytes do not match the checksum the server announced.

Test hook: pass `transport=httpx.MockTransport(handler)` (or any `httpx.BaseTransport`) to talk to a
fake server, and `backoff=0` to make retries instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from urllib.parse import quote

import httpx

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "ChecksumMismatch",
    "Client",
    "Progress",
    "ServerUnreachable",
    "file_sha256",
]

# Called with the number of bytes transferred so far (cumulative, not a delta), so that a retried
# upload simply starts again from 0 instead of overshooting the total.
Progress = Callable[[int], None]

DEFAULT_TIMEOUT = 60.0
# After the last byte of an upload the server hashes and stores the artifact before it answers;
# for a multi-GB model that takes longer than an ordinary read timeout.
UPLOAD_READ_TIMEOUT = 600.0
RETRY_STATUSES = frozenset({502, 503, 504})
# S3 asks clients to retry its 500 InternalError as well as 503 SlowDown.
PART_RETRY_STATUSES = RETRY_STATUSES | {500}
# Files at least this large go straight to the artifact store by presigned multipart upload when the
# server's store is S3 (override: `direct_upload_bytes`, or MODELGATE_DIRECT_UPLOAD_BYTES).
DIRECT_UPLOAD_BYTES = 64 * 1024 * 1024
DIRECT_UPLOAD_ENV = "MODELGATE_DIRECT_UPLOAD_BYTES"
CHUNK_SIZE = 1024 * 1024
CHECKSUM_HEADER = "X-Checksum-Sha256"

T = TypeVar("T")

log = logging.getLogger("modelgate_client")


class ApiError(Exception):
    """The server answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields: dict[str, Any] = dict(fields or {})

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Parse `{"error": {"code", "message", "fields"?}}`; fall back to the body text."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            fields = error.get("fields")
            return cls(
                response.status_code,
                str(error.get("code") or f"http_{response.status_code}"),
                str(error.get("message") or response.reason_phrase),
                fields if isinstance(fields, dict) else None,
            )
        text = response.text.strip()
        if len(text) > 500:
            text = text[:500] + "…"
        message = f"HTTP {response.status_code} {response.reason_phrase}"
        return cls(
            response.status_code,
            f"http_{response.status_code}",
            f"{message}: {text}" if text else message,
        )


class ServerUnreachable(Exception):
    """No HTTP answer: the server is down, the URL is wrong, or the network timed out."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach MODELGATE_URL={url}: {describe_transport_error(cause)}")
        self.url = url
        self.cause = cause


class ChecksumMismatch(Exception):
    """The downloaded bytes do not hash to what the server announced."""

    def __init__(self, expected: str | None, actual: str, path: Path) -> None:
        if expected is None:
            detail = f"the server sent no {CHECKSUM_HEADER} header, so {path.name} cannot be verified"
        else:
            detail = f"checksum mismatch for {path.name}: server said {expected}, bytes hash to {actual}"
        super().__init__(detail)
        self.expected = expected
        self.actual = actual
        self.path = path


def describe_transport_error(error: Exception) -> str:
    """httpx errors often have an empty str(); name the class so the message is never blank."""
    text = str(error).strip()
    return text or type(error).__name__


def file_sha256(path: str | os.PathLike[str], progress: Progress | None = None) -> str:
    """Hash a file in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    return digest.hexdigest()


class _ProgressFile(io.BufferedReader):
    """A binary file whose `read()` reports the position reached.

    httpx streams a multipart file field by calling `read()` in chunks, after `seek(0)`, and sizes
    it with `fstat(fileno())`, so the request keeps a Content-Length (Django cannot read a chunked
    request body) while the file is never read whole into memory.
    """

    def __init__(self, path: Path, progress: Progress | None) -> None:
        super().__init__(io.FileIO(path, "rb"), buffer_size=CHUNK_SIZE)
        self._progress = progress

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if self._progress is not None:
            self._progress(self.tell())
        return data


class Client:
    """A Modelgate server, addressed by its base URL (with or without `/api/v1`)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        retries: int = 3,
        backoff: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str | None = None,
        direct_upload_bytes: int | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.direct_upload_bytes = (
            direct_upload_bytes if direct_upload_bytes is not None else direct_upload_bytes_from_env()
        )
        self._transport = transport
        base = self.url if self.url.endswith("/api/v1") else f"{self.url}/api/v1"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        headers = {
            "Accept": "application/json",
            "User-Agent": user_agent or f"modelgate-client/{__version__}",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- models ---------------------------------------------------------------------------------

    def create_model(
        self, name: str, description: str = "", policy: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Register a model name. 409 (ApiError) when it already exists."""
        body: dict[str, Any] = {"name": name, "description": description}
        if policy is not None:
            body["policy"] = dict(policy)
        # Not retried: a create that reached the server would come back as a 409 on the retry.
        return self._json(self._send("POST", "models/", json=body))

    def get_model(self, name: str) -> dict[str, Any]:
        return self._json(self._send_retrying("GET", f"models/{_seg(name)}/"))

    # -- versions -------------------------------------------------------------------------------

    def push(
        self,
        model: str,
        artifact_path: str | os.PathLike[str],
        metadata: Mapping[str, Any],
        idempotency_key: str | None = None,
        progress: Progress | None = None,
        *,
        hash_progress: Progress | None = None,
        direct_threshold: int | None = None,
    ) -> dict[str, Any]:
        """Upload an artifact as a new version of `model`; returns the Version (201).

        1. Hash the file (streaming) and put `sha256` into the metadata, so that the server can
           verify what it received.
        2. From `direct_threshold` bytes up (default: the client's `direct_upload_bytes`), send the
           file straight to the server's S3 store by presigned multipart upload (`push_direct`); a
           server whose store is its disk says so, and the push goes on as multipart.
        3. Otherwise send it as multipart (`artifact`, `metadata`) with an `Idempotency-Key`:
           generated once here unless given, and the same on every retry, so that a retry after a
           lost response returns the version already created instead of registering a second one.
        4. Retry connection errors and 502/503/504 (see `retries`, `backoff`).
        """
        path = Path(artifact_path)
        meta = dict(metadata)
        meta["sha256"] = file_sha256(path, hash_progress)
        key = idempotency_key or str(uuid.uuid4())
        threshold = self.direct_upload_bytes if direct_threshold is None else direct_threshold
        if path.stat().st_size >= threshold:
            version = self._push_direct(model, path, meta, key, progress)
            if version is not None:
                return version
        metadata_json = json.dumps(meta)
        read_timeout = max(self.timeout, UPLOAD_READ_TIMEOUT)

        def attempt() -> httpx.Response:
            # A fresh file object and request per attempt: a half-sent body cannot be rewound.
            with _ProgressFile(path, progress) as f:
                return self._http.post(
                    f"models/{_seg(model)}/versions/",
                    data={"metadata": metadata_json},
                    files={"artifact": (path.name, cast(IO[bytes], f), "application/octet-stream")},
                    headers={"Idempotency-Key": key},
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0), read=read_timeout),
                )

        return self._json(self._retrying(attempt))

    def push_direct(
        self,
        model: str,
        artifact_path: str | os.PathLike[str],
        metadata: Mapping[str, Any],
        idempotency_key: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any] | None:
        """Push by presigned multipart upload to the server's S3 store; None when it has none.

        The bytes go to S3 part by part, each streamed from the file; the server only hands out the
        URLs and then verifies and registers what S3 assembled.
        """
        path = Path(artifact_path)
        meta = dict(metadata)
        meta.setdefault("sha256", file_sha256(path))
        return self._push_direct(model, path, meta, idempotency_key or str(uuid.uuid4()), progress)

    def _push_direct(
        self, model: str, path: Path, meta: dict[str, Any], key: str, progress: Progress | None
    ) -> dict[str, Any] | None:
        """1. Start the upload (the server answers with one presigned URL per part).
        2. PUT each part to S3, retrying a part on transport errors and 5xx; abort on failure.
        3. Complete with the parts' ETags and the metadata (same Idempotency-Key on a retry).
        """
        base = f"models/{_seg(model)}/uploads/"
        size = path.stat().st_size
        body = {"filename": path.name, "size": size, "sha256": meta["sha256"]}
        try:
            # Not retried: a start whose answer was lost only leaves a pending upload to the sweep.
            started = self._json(self._send("POST", base, json=body))
        except ApiError as e:
            # 409: the server stores artifacts on its disk; 404/405: a server without the endpoint
            # (or no such model, which the multipart push then reports in the same words).
            if e.code == "direct_upload_unavailable" or e.status in (404, 405):
                log.info("direct upload not available (%s); pushing as multipart", e.message)
                return None
            raise
        upload = f"{base}{_seg(started['id'])}/"
        try:
            parts = self._put_parts(path, started, progress)
        except BaseException:
            # Best effort: S3 keeps the parts of an unfinished upload until it is aborted.
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(upload)
            raise
        read_timeout = max(self.timeout, UPLOAD_READ_TIMEOUT)
        return self._json(
            self._retrying(
                lambda: self._http.post(
                    f"{upload}complete/",
                    json={"parts": parts, "metadata": meta},
                    headers={"Idempotency-Key": key},
                    # The server reads the object back from S3, hashes and checks it before it answers.
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0), read=read_timeout),
                )
            )
        )

    def _put_parts(
        self, path: Path, started: Mapping[str, Any], progress: Progress | None
    ) -> list[dict[str, Any]]:
        part_size = int(started["part_size"])
        done: list[dict[str, Any]] = []
        # A client of its own: S3 must not receive the registry's token.
        with httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0), read=UPLOAD_READ_TIMEOUT),
            transport=self._transport,
        ) as s3:
            for part in started["parts"]:
                number, length = int(part["part_number"]), int(part["size"])
                offset = (number - 1) * part_size
                etag = self._put_part(s3, part["url"], path, offset, length, progress)
                done.append({"part_number": number, "etag": etag})
        return done

    def _put_part(
        self, s3: httpx.Client, url: str, path: Path, offset: int, length: int, progress: Progress | None
    ) -> str:
        where = httpx.URL(url).copy_with(query=None)
        for n in range(self.retries + 1):
            last = n == self.retries
            try:
                response = s3.put(
                    url,
                    content=_file_range(path, offset, length, progress),
                    # With a length, httpx streams the generator without chunked encoding (S3 refuses it).
                    headers={"Content-Length": str(length)},
                )
            except httpx.TransportError as e:
                if last:
                    raise ServerUnreachable(str(where), e) from e
                delay = self.backoff * 2**n
            else:
                if response.status_code not in PART_RETRY_STATUSES or last:
                    if response.is_error:
                        raise ApiError.from_response(response)
                    return response.headers["ETag"]
                delay = _retry_after(response) or self.backoff * 2**n
            time.sleep(min(delay, 60.0))
        raise AssertionError("unreachable")

    def get_version(self, model: str, v: int | str) -> dict[str, Any]:
        return self._json(self._send_retrying("GET", f"models/{_seg(model)}/versions/{_seg(v)}/"))

    def iter_versions(self, model: str, status: str | None = None) -> Iterator[dict[str, Any]]:
        """Versions of a model, following the cursor pages lazily."""
        params = {"status": status} if status else None
        url: str | None = f"models/{_seg(model)}/versions/"
        while url:
            page = self._json(self._send_retrying("GET", url, params=params))
            yield from page.get("results", [])
            url = self._same_server(page["next"]) if page.get("next") else None
            params = None  # the `next` URL already carries the query string

    def list_versions(self, model: str, status: str | None = None) -> list[dict[str, Any]]:
        return list(self.iter_versions(model, status))

    def download(
        self,
        model: str,
        v: int | str,
        dest: str | os.PathLike[str],
        fmt: str | None = None,
        progress: Progress | None = None,
        *,
        total: Callable[[int | None], None] | None = None,
    ) -> str:
        """Stream a version's artifact (or one of its exports) to `dest`; return its sha256.

        The bytes go to `<dest>.part` and are renamed only after the hash matches the server's
        `X-Checksum-Sha256` header, so a failed or corrupt download never leaves a plausible file.
        `total` is called once with the Content-Length (or None) before the first byte.
        """
        path = f"models/{_seg(model)}/versions/{_seg(v)}/"
        path += f"exports/{_seg(fmt)}/artifact/" if fmt else "artifact/"
        dest_path = Path(dest)
        part = dest_path.with_name(dest_path.name + ".part")

        def attempt() -> tuple[str | None, str]:
            with self._http.stream("GET", path) as response:
                if response.is_error:
                    response.read()
                    if response.status_code in RETRY_STATUSES:
                        raise _RetryableStatus(response)
                    raise ApiError.from_response(response)
                expected = response.headers.get(CHECKSUM_HEADER)
                if total is not None:
                    length = response.headers.get("Content-Length")
                    total(int(length) if length and length.isdigit() else None)
                digest = hashlib.sha256()
                done = 0
                with open(part, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK_SIZE):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done)
                return (expected.strip().lower() if expected else None), digest.hexdigest()

        try:
            expected, actual = self._retrying_call(attempt)
            if expected != actual:
                raise ChecksumMismatch(expected, actual, dest_path)
            part.replace(dest_path)
        finally:
            part.unlink(missing_ok=True)
        return actual

    # -- datasets -------------------------------------------------------------------------------

    def push_dataset(
        self,
        path: str | os.PathLike[str],
        name: str,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a dataset file (CSV, Parquet, NPZ); with no `version` the server numbers it."""
        file_path = Path(path)
        data = {"name": name}
        if version is not None:
            data["version"] = str(version)
        # Not retried: the endpoint takes no idempotency key, so a retry could add a second version.
        with _ProgressFile(file_path, progress) as f:
            response = self._send(
                "POST",
                "datasets/",
                data=data,
                files={"file": (file_path.name, cast(IO[bytes], f), "application/octet-stream")},
                timeout=httpx.Timeout(
                    self.timeout,
                    connect=min(self.timeout, 10.0),
                    read=max(self.timeout, UPLOAD_READ_TIMEOUT),
                ),
            )
        return self._json(response)

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; transport failures become ServerUnreachable, error statuses ApiError."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as e:
            raise ServerUnreachable(self.url, e) from e
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _send_retrying(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """For safe requests (GET) only."""
        return self._retrying(lambda: self._http.request(method, url, **kwargs))

    def _retrying(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        def attempt() -> httpx.Response:
            response = send()
            if response.status_code in RETRY_STATUSES:
                raise _RetryableStatus(response)
            if response.is_error:
                raise ApiError.from_response(response)
            return response

        return self._retrying_call(attempt)

    def _retrying_call(self, attempt: Callable[[], T]) -> T:
        """Run `attempt`, retrying connection errors and 502/503/504 with exponential backoff."""
        for n in range(self.retries + 1):
            last = n == self.retries
            try:
                return attempt()
            except _RetryableStatus as e:
                if last:
                    raise ApiError.from_response(e.response) from None
                delay = _retry_after(e.response) or self.backoff * 2**n
            except httpx.UnsupportedProtocol as e:  # a typo in the URL will not fix itself
                raise ServerUnreachable(self.url, e) from e
            except httpx.TransportError as e:
                if last:
                    raise ServerUnreachable(self.url, e) from e
                delay = self.backoff * 2**n
            time.sleep(min(delay, 60.0))
        raise AssertionError("unreachable")

    def _same_server(self, link: str) -> str:
        """A pagination link with our scheme and host: behind a proxy the server may see another."""
        target = httpx.URL(link)
        return str(self._http.base_url.copy_with(path=target.path, query=target.query or None))

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(
                response.status_code,
                "bad_response",
                f"the server sent a non-JSON answer to {response.request.url}",
            ) from e
        if not isinstance(body, dict):
            raise ApiError(
                response.status_code,
                "bad_response",
                f"expected a JSON object from {response.request.url}",
            )
        return body


def direct_upload_bytes_from_env(env: Mapping[str, str] | None = None) -> int:
    """MODELGATE_DIRECT_UPLOAD_BYTES (a byte count, or with a K/M/G suffix), else the default."""
    value = (os.environ if env is None else env).get(DIRECT_UPLOAD_ENV, "").strip()
    return parse_size(value) if value else DIRECT_UPLOAD_BYTES


def parse_size(text: str) -> int:
    """`1048576`, `64M`, `1G`, `512KiB` as bytes (binary multiples); ValueError otherwise."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in units else (cleaned, "")
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a size (e.g. 67108864, 64M or 1G)")
    return int(number) * units[unit]


def _file_range(path: Path, offset: int, length: int, progress: Progress | None) -> Iterator[bytes]:
    """`length` bytes of the file from `offset`, 1 MiB at a time; progress counts the whole file."""
    sent = 0
    if progress is not None:
        progress(offset)
    with open(path, "rb") as f:
        f.seek(offset)
        while sent < length:
            chunk = f.read(min(CHUNK_SIZE, length - sent))
            if not chunk:
                raise OSError(f"{path} shrank while it was being uploaded")
            sent += len(chunk)
            if progress is not None:
                progress(offset + sent)
            yield chunk


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _seg(value: object) -> str:
    """One URL path segment, escaped (a slash in a name must not change the route)."""
    return quote(str(value), safe="")

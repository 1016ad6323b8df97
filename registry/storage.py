"""The artifact store: content-addressed blobs on the local disk or in S3.

A blob's key is derived from its sha256, so the same bytes are stored once whoever pushes them, and a
retried or concurrent upload of the same bytes is harmless. Both backends are Django storages
(S3 through django-storages and boto3), chosen by ``ARTIFACT_STORE``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage
from django.core.signals import setting_changed
from django.dispatch import receiver

CHUNK = 1024 * 1024


class StoreUnavailable(Exception):
    """The artifact store cannot be reached (S3 endpoint down, disk gone)."""


class AtomicFileSystemStorage(FileSystemStorage):
    """Writes to a temporary name and renames into place, so a half-written blob is never visible
    under its real key (a worker killed mid-write leaves only a ``.part`` file)."""

    def _save(self, name: str, content: IO[bytes]) -> str:
        full = self.path(name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        tmp = f"{full}.{uuid.uuid4().hex}.part"
        if self._link(content, tmp, full):
            return name
        with open(tmp, "wb") as out:
            if hasattr(content, "chunks"):
                for chunk in content.chunks(CHUNK):
                    out.write(chunk)
            else:
                while chunk := content.read(CHUNK):
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, full)
        return name

    @staticmethod
    def _link(content: IO[bytes], tmp: str, full: str) -> bool:
        """Hard-link a private temporary file (a streamed upload, a worker's scratch file) into place
        instead of copying it: every pushed byte was otherwise written to disk twice. Falls back to
        a copy across file systems."""
        source = getattr(content, "name", None)
        if not isinstance(source, str) or not os.path.isfile(source):
            return False
        try:
            os.link(source, tmp)
            os.chmod(tmp, 0o644)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, full)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        return name  # content-addressed: the same name always means the same bytes


def blob_key(sha256: str, kind: str = "artifacts") -> str:
    return f"{kind}/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


@cache
def _store() -> Storage:
    target = settings.ARTIFACT_STORE
    if target.startswith("s3://"):
        from storages.backends.s3 import S3Storage

        parsed = urlparse(target)
        return S3Storage(
            bucket_name=parsed.netloc,
            location=parsed.path.strip("/"),
            endpoint_url=settings.AWS_ENDPOINT_URL,
            region_name=settings.AWS_REGION,
            file_overwrite=True,
            default_acl=None,
            querystring_auth=True,
        )
    return AtomicFileSystemStorage(location=target)


@receiver(setting_changed)
def _reset_store(*, setting: str, **kwargs: object) -> None:
    if setting in {"ARTIFACT_STORE", "AWS_ENDPOINT_URL"}:
        _store.cache_clear()


def store() -> Storage:
    return _store()


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"the artifact store is unavailable: {exc}")


def blob_put(fileobj: IO[bytes], *, sha256: str, kind: str = "artifacts") -> str:
    """Store the bytes under their content address (once) and return the key."""
    key = blob_key(sha256, kind)
    backend = store()
    try:
        if not backend.exists(key):
            fileobj.seek(0)
            backend.save(key, fileobj)
    except OSError as exc:
        raise _unavailable(exc) from exc
    except Exception as exc:  # botocore errors do not share a base class with OSError
        if type(exc).__module__.startswith(("botocore", "boto3", "urllib3")):
            raise _unavailable(exc) from exc
        raise
    return key


def blob_open(key: str) -> IO[bytes]:
    """A readable stream of the blob. On S3 it is the response body itself, read as it arrives:
    django-storages' ``open()`` would first download the whole object into memory."""
    try:
        if store_is_s3():
            return _s3_body(key)
        return store().open(key, "rb")
    except FileNotFoundError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("botocore", "boto3")):
            raise _unavailable(exc) from exc
        raise


def blob_chunks(key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
    with blob_open(key) as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def blob_exists(key: str) -> bool:
    return store().exists(key)


def blob_delete(key: str) -> None:
    store().delete(key)


def blob_list(prefix: str) -> Iterator[tuple[str, dt.datetime]]:
    """Every stored name under ``prefix`` (``artifacts/``, ``exports/`` ...), with its last change.

    Streams: S3 is listed a page of 1,000 at a time, and the disk a directory at a time. The file system
    also yields a killed writer's ``.part`` files, which are never any record's key.
    """
    if store_is_s3():
        client, bucket = _s3()
        location = store().location.strip("/")  # type: ignore[attr-defined]
        strip = len(location) + 1 if location else 0
        with _s3_calls():
            pages = client.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
                Bucket=bucket, Prefix=_s3_key(prefix)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][strip:], item["LastModified"]
        return
    root = Path(store().location)  # type: ignore[attr-defined]
    for directory, _, files in os.walk(root / prefix):
        for name in files:
            path = Path(directory) / name
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                changed = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC)
                yield path.relative_to(root).as_posix(), changed


@contextmanager
def blob_local_path(key: str, *, suffix: str = "") -> Iterator[Path]:
    """A local path to the blob: the file itself on disk, a temporary copy for S3."""
    backend = store()
    try:
        local = Path(backend.path(key))
    except NotImplementedError:
        local = None
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(key)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="modelgate-") as tmp:
        target = Path(tmp) / f"blob{suffix}"
        with blob_open(key) as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        yield target


# --- direct uploads (S3 only) ---------------------------------------------------------------------
# Large artifacts can go from the client straight to the bucket by presigned multipart upload
# (registry.direct_uploads holds the rules). These are the few S3 calls that needs, on the same bucket
# and prefix as the store; names are relative to the store's prefix, like every other key here.


def store_is_s3() -> bool:
    return settings.ARTIFACT_STORE.startswith("s3://")


@contextmanager
def _s3_calls() -> Iterator[None]:
    """botocore's transport failures become StoreUnavailable; S3's own refusals (ClientError) pass."""
    from botocore.exceptions import BotoCoreError

    try:
        yield
    except BotoCoreError as exc:
        raise _unavailable(exc) from exc


def _s3() -> tuple[object, str]:
    backend = store()
    return backend.connection.meta.client, backend.bucket_name  # type: ignore[attr-defined]


def _s3_key(name: str) -> str:
    location = store().location.strip("/")  # type: ignore[attr-defined]
    return f"{location}/{name}" if location else name


def multipart_start(name: str) -> str:
    """Start a multipart upload to ``name``; returns S3's upload id."""
    client, bucket = _s3()
    with _s3_calls():
        answer = client.create_multipart_upload(  # type: ignore[attr-defined]
            Bucket=bucket, Key=_s3_key(name), ContentType="application/octet-stream"
        )
    return answer["UploadId"]


def multipart_part_urls(name: str, *, upload_id: str, parts: int, expires: int) -> list[str]:
    """Presigned PUT URLs for parts 1..``parts``.

    Signed for ``AWS_PUBLIC_ENDPOINT_URL`` when set: the host is part of the signature, and the
    clients may reach the store by another name than the web process does (a proxy, a container
    network). Signing is local: no request goes to S3 here.
    """
    import boto3
    from botocore.config import Config

    signer = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.AWS_PUBLIC_ENDPOINT_URL or settings.AWS_ENDPOINT_URL,
        region_name=settings.AWS_REGION,
        config=Config(signature_version="s3v4"),
    )
    _, bucket = _s3()
    key = _s3_key(name)
    return [
        signer.generate_presigned_url(
            "upload_part",
            Params={"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
            ExpiresIn=expires,
            HttpMethod="PUT",
        )
        for number in range(1, parts + 1)
    ]


def multipart_complete(name: str, *, upload_id: str, parts: list[tuple[int, str]]) -> None:
    """Assemble the parts; S3 checks every ETag (a ClientError when one does not match)."""
    client, bucket = _s3()
    with _s3_calls():
        client.complete_multipart_upload(  # type: ignore[attr-defined]
            Bucket=bucket,
            Key=_s3_key(name),
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )


def multipart_abort(name: str, *, upload_id: str) -> None:
    """Abort a multipart upload (S3 drops its parts); an upload S3 no longer knows is already gone."""
    from botocore.exceptions import ClientError

    client, bucket = _s3()
    try:
        with _s3_calls():
            client.abort_multipart_upload(Bucket=bucket, Key=_s3_key(name), UploadId=upload_id)  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise


def _s3_body(name: str) -> IO[bytes]:
    from botocore.exceptions import ClientError

    client, bucket = _s3()
    try:
        return client.get_object(Bucket=bucket, Key=_s3_key(name))["Body"]  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            raise FileNotFoundError(name) from exc
        raise


def blob_size(name: str) -> int:
    client, bucket = _s3()
    with _s3_calls():
        return int(client.head_object(Bucket=bucket, Key=_s3_key(name))["ContentLength"])  # type: ignore[attr-defined]


def blob_copy_to(name: str, out: IO[bytes], hasher: object) -> int:
    """Stream the object into ``out`` 1 MiB at a time, feeding ``hasher``; returns the bytes read.

    Reads the body directly: the storage's own ``open()`` buffers the whole object in memory.
    """
    client, bucket = _s3()
    size = 0
    with _s3_calls():
        body = client.get_object(Bucket=bucket, Key=_s3_key(name))["Body"]  # type: ignore[attr-defined]
        for chunk in body.iter_chunks(CHUNK):
            hasher.update(chunk)  # type: ignore[attr-defined]
            out.write(chunk)
            size += len(chunk)
    return size


def blob_adopt(name: str, *, sha256: str, kind: str = "artifacts") -> str:
    """Move a verified object from its staging name to its content address; returns the key.

    A server-side copy (S3 copies the bytes; for a large object boto3 copies it in parts), skipped when
    the same bytes are already stored. The staging object is deleted either way.
    """
    key = blob_key(sha256, kind)
    client, bucket = _s3()
    with _s3_calls():
        if not blob_exists(key):
            client.copy(  # type: ignore[attr-defined]
                {"Bucket": bucket, "Key": _s3_key(name)}, bucket, _s3_key(key)
            )
        client.delete_object(Bucket=bucket, Key=_s3_key(name))  # type: ignore[attr-defined]
    return key

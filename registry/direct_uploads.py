"""Direct uploads: a large artifact goes from the client straight to S3, never through this process.

1. Start: the publisher declares the file (name, size, sha256); we start an S3 multipart upload under
   ``uploads/<id>`` and answer with one presigned PUT URL per part.
2. The client PUTs each part to S3 itself.
3. Complete: S3 assembles the parts (it checks their ETags); we read the object back once, hashing it
   into a temporary file (the artifact checks need a local file anyway), refuse it when the size or
   sha256 differ from the declaration, and register the version with the same function as a multipart
   push (same checks, events, pipeline, Idempotency-Key). The staged object is then moved to its
   content address, or deleted when it was refused.
4. Abort, or the maintenance sweep for uploads left pending: S3 drops the parts.

A ``DirectUpload`` row binds the upload to its model, its user and the declared size and sha256; its
state moves by compare-and-set updates, so two complete requests never both do the work.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from registry import storage
from registry.errors import ChecksumMismatch, Conflict, NotFound, ServiceError, TooLarge
from registry.models import DirectUpload, DirectUploadState, ModelVersion, RegisteredModel
from registry.services import Upload

log = logging.getLogger(__name__)

S = DirectUploadState
MiB = 1024**2
MIN_PART_BYTES = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's largest part count
STAGING_PREFIX = "uploads"

# Registers the verified upload as a version, called as ``register(upload=...)``: lifecycle.pipeline.
# version_push bound to the push's metadata, passed in because the registry does not import the lifecycle.
Register = Callable[..., tuple[ModelVersion, bool]]


@dataclass(frozen=True)
class Started:
    upload: DirectUpload
    urls: list[str]


def part_size_for(size: int) -> int:
    """The configured part size, at least S3's minimum, grown (in whole MiB) to fit in 10,000 parts."""
    part = max(settings.DIRECT_UPLOAD_PART_BYTES, MIN_PART_BYTES)
    if math.ceil(size / part) > MAX_PARTS:
        part = math.ceil(size / MAX_PARTS / MiB) * MiB
    return part


def direct_upload_start(
    *, model: RegisteredModel, actor: AbstractBaseUser, filename: str, size: int, sha256: str
) -> Started:
    """Start a multipart upload to S3 and presign its parts; nothing is written when S3 refuses."""
    if not storage.store_is_s3():
        raise Conflict(
            "direct uploads need an S3 artifact store (ARTIFACT_STORE=s3://...), and this server keeps "
            "artifacts on its disk: push the file as multipart to the versions endpoint instead",
            code="direct_upload_unavailable",
        )
    limit = settings.MAX_ARTIFACT_BYTES
    if size > limit:
        raise TooLarge(
            f"the artifact is larger than the limit of {limit} bytes ({limit / MiB:.0f} MiB)",
            fields={"size": [f"at most {limit}"]},
        )
    upload_id = uuid.uuid4()
    name = f"{STAGING_PREFIX}/{upload_id}"
    part = part_size_for(size)
    parts = max(1, math.ceil(size / part))
    s3_upload_id = storage.multipart_start(name)
    now = timezone.now()
    try:
        upload = DirectUpload.objects.create(
            id=upload_id,
            model=model,
            created_by=actor,
            s3_upload_id=s3_upload_id,
            staging_key=name,
            filename=Path(filename).name[:255],
            size=size,
            sha256=sha256.lower(),
            part_size=part,
            part_count=parts,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=settings.DIRECT_UPLOAD_URL_SECONDS),
        )
        urls = storage.multipart_part_urls(
            name, upload_id=s3_upload_id, parts=parts, expires=settings.DIRECT_UPLOAD_URL_SECONDS
        )
    except Exception:
        storage.multipart_abort(name, upload_id=s3_upload_id)
        DirectUpload.objects.filter(pk=upload_id).delete()
        raise
    return Started(upload=upload, urls=urls)


def _claim(*, model: RegisteredModel, actor: AbstractBaseUser, upload_id: uuid.UUID, to: str) -> DirectUpload:
    """Move a pending upload to ``to`` with one compare-and-set update: of two concurrent requests only
    one wins; the other gets the 409 that says what happened."""
    mine = DirectUpload.objects.filter(pk=upload_id, model=model, created_by=actor)
    if mine.filter(state=S.PENDING).update(state=to) == 1:
        return mine.select_related("model").get()
    upload = mine.select_related("version").first()
    if upload is None:
        raise NotFound(f"{model.name} has no direct upload {upload_id} of yours")
    raise Conflict(_state_sentence(upload), code=f"upload_{upload.state}")


def _state_sentence(upload: DirectUpload) -> str:
    if upload.state == S.COMPLETED and upload.version is not None:
        return f"this upload was already completed as version {upload.version.version}"
    if upload.state == S.COMPLETING:
        return "this upload is being completed by another request"
    if upload.state == S.FAILED:
        return f"this upload was refused ({upload.error}); start a new one"
    return f"this upload is {upload.state}; start a new one"


def _finish(
    upload: DirectUpload, state: str, *, error: str = "", version: ModelVersion | None = None
) -> None:
    DirectUpload.objects.filter(pk=upload.pk).update(
        state=state, error=error[:2000], version=version, finished_at=timezone.now()
    )


def direct_upload_complete(
    *,
    model: RegisteredModel,
    actor: AbstractBaseUser,
    upload_id: uuid.UUID,
    parts: list[tuple[int, str]],
    register: Register,
    idempotency_key: str | None = None,
) -> tuple[ModelVersion, bool]:
    """Assemble, verify and register a direct upload; returns (version, created).

    A retried complete with the Idempotency-Key of the version it created gets that version back.
    """
    try:
        upload = _claim(model=model, actor=actor, upload_id=upload_id, to=S.COMPLETING)
    except Conflict:
        done = DirectUpload.objects.filter(
            pk=upload_id, state=S.COMPLETED, version__isnull=False, version__idempotency_key=idempotency_key
        ).select_related("version__model")
        if idempotency_key and (replay := done.first()) is not None:
            return replay.version, False  # type: ignore[return-value]
        raise

    # 1. Until S3 has assembled the parts, a refusal leaves the upload pending: the client may fix its
    #    list of parts (or re-send one) and complete again.
    numbers = [n for n, _ in parts]
    if numbers != list(range(1, upload.part_count + 1)):
        DirectUpload.objects.filter(pk=upload.pk).update(state=S.PENDING)
        raise ServiceError(
            f"expected parts 1 to {upload.part_count} in order, each once, got {numbers[:20]}",
            code="bad_parts",
            fields={"parts": [f"parts 1..{upload.part_count}"]},
        )
    from botocore.exceptions import ClientError

    try:
        storage.multipart_complete(upload.staging_key, upload_id=upload.s3_upload_id, parts=parts)
    except ClientError as exc:
        DirectUpload.objects.filter(pk=upload.pk).update(state=S.PENDING)
        error = exc.response.get("Error", {})
        raise ServiceError(
            f"S3 refused to assemble the parts: {error.get('Code')}: {error.get('Message')}",
            code="bad_parts",
            fields={"parts": [str(error.get("Message") or error.get("Code"))]},
        ) from None
    except storage.StoreUnavailable:
        DirectUpload.objects.filter(pk=upload.pk).update(state=S.PENDING)
        raise

    # 2. From here on the multipart upload is gone and the object exists: a refusal deletes it.
    try:
        version, created = _verify_and_register(upload, register)
    except Exception as exc:
        message = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        _finish(upload, S.FAILED, error=message)
        _delete_quietly(upload.staging_key)
        raise
    _finish(upload, S.COMPLETED, version=version)
    _delete_quietly(upload.staging_key)  # a replayed key left it in place
    return version, created


def _verify_and_register(upload: DirectUpload, register: Register) -> tuple[ModelVersion, bool]:
    size = storage.blob_size(upload.staging_key)
    if size != upload.size:
        raise ServiceError(
            f"size mismatch: the upload was declared as {upload.size} bytes but S3 holds {size}",
            code="size_mismatch",
            fields={"size": ["does not match the uploaded bytes"]},
        )
    with tempfile.NamedTemporaryFile(
        prefix="direct-", suffix=Path(upload.filename).suffix[:16], dir=settings.FILE_UPLOAD_TEMP_DIR
    ) as local:
        hasher = hashlib.sha256()
        storage.blob_copy_to(upload.staging_key, local, hasher)
        local.flush()
        sha256 = hasher.hexdigest()
        if sha256 != upload.sha256:
            raise ChecksumMismatch(
                f"sha256 mismatch: the upload was declared as {upload.sha256} but the bytes in S3 hash "
                f"to {sha256}",
                fields={"sha256": ["does not match the uploaded bytes"]},
            )
        return register(
            upload=Upload(
                path=Path(local.name),
                sha256=sha256,
                size=size,
                filename=upload.filename,
                staged_key=upload.staging_key,
            )
        )


def _delete_quietly(name: str) -> None:
    try:
        storage.blob_delete(name)
    except Exception:  # the sweep or a bucket lifecycle rule catches what is left
        log.warning("could not delete the staged object %s", name, exc_info=True)


def direct_upload_abort(*, model: RegisteredModel, actor: AbstractBaseUser, upload_id: uuid.UUID) -> None:
    """Abort a pending upload: S3 drops the parts already sent."""
    upload = _claim(model=model, actor=actor, upload_id=upload_id, to=S.ABORTED)
    DirectUpload.objects.filter(pk=upload.pk).update(finished_at=timezone.now())
    storage.multipart_abort(upload.staging_key, upload_id=upload.s3_upload_id)


def direct_uploads_expire(*, now: dt.datetime | None = None) -> int:
    """Abort the uploads left pending (or stuck completing) past ``DIRECT_UPLOAD_STALE_SECONDS``.

    Each row is claimed by a compare-and-set update before its S3 call, so two sweeps never both act;
    returns how many were aborted.
    """
    if not storage.store_is_s3():
        return 0
    cutoff = (now or timezone.now()) - dt.timedelta(seconds=settings.DIRECT_UPLOAD_STALE_SECONDS)
    stale = DirectUpload.objects.filter(state__in=[S.PENDING, S.COMPLETING], created_at__lt=cutoff)
    aborted = 0
    for upload in stale.order_by("created_at")[:1000]:
        claimed = DirectUpload.objects.filter(pk=upload.pk, state=upload.state).update(
            state=S.ABORTED, error="left unfinished; aborted by the sweep", finished_at=timezone.now()
        )
        if claimed != 1:
            continue
        try:
            storage.multipart_abort(upload.staging_key, upload_id=upload.s3_upload_id)
        except Exception:
            log.warning("could not abort the multipart upload of %s", upload.pk, exc_info=True)
        _delete_quietly(upload.staging_key)  # a completing upload may have been assembled already
        aborted += 1
    return aborted
